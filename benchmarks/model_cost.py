"""Prints parameter counts and inference FLOPs of detector configs, split by stage.

The Mask R-CNN paper (section 3.1, figure 3) says the ResNet-C4 head is compute-heavy
because conv5 runs once per RoI, and FPN moves conv5 into the backbone. This script
measures it: each config's model (random weights, ``roi_align_implementation: tf``) is
traced at a fixed padded input size (800x1333 -> 800x1344, the papers' test scale) and
TensorFlow's per-op FLOP statistics (2 per multiply-add, convolutions, deconvolutions and
matrix products) are summed over the frozen graph, grouped by the model's stages. Test-time
proposal counts are each config's (1000 FPN, 300 C4); the box head runs on all of them and
the mask head on the 100 detections. FLOPs of RoIAlign, NMS and elementwise ops are not
counted (TensorFlow has no statistics for most of them; they are small next to the convs).

    python benchmarks/model_cost.py [--configs A.yaml B.yaml] [--height 800 --width 1333]
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import defaultdict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import ops as framework_ops  # noqa: E402
from tensorflow.python.framework.convert_to_constants import (  # noqa: E402
    convert_variables_to_constants_v2,
)

from kmask.config import load_config  # noqa: E402
from kmask.modeling.factory import build_float32_model  # noqa: E402

_STAGES = ("backbone", "fpn", "rpn", "res5_head", "box_head", "mask_head", "keypoint_head")


def stage_flops(model, height: int, width: int) -> dict[str, int]:
    """FLOPs of one image's inference, ``{stage: flops}`` plus ``"total"``."""

    @tf.function
    def forward(images: tf.Tensor, image_size: tf.Tensor) -> dict[str, tf.Tensor]:
        return model({"images": images, "image_size": image_size}, training=False)

    concrete = forward.get_concrete_function(
        tf.TensorSpec([1, height, width, 3], tf.float32), tf.TensorSpec([1, 2], tf.int32)
    )
    graph = convert_variables_to_constants_v2(concrete).graph
    flops: dict[str, int] = defaultdict(int)
    for operation in graph.get_operations():
        try:
            stats = framework_ops.get_stats_for_node_def(graph, operation.node_def, "flops")
        except ValueError:  # no statistics registered for this op type
            continue
        if not stats.value:
            continue
        # Scopes are layer names with a call suffix: "mask_rcnn_1/roi_heads_1/res5_head_3/...".
        scopes = {re.sub(r"_\d+$", "", scope) for scope in operation.name.split("/")}
        stage = next((s for s in _STAGES if s in scopes), "other")
        flops[stage] += stats.value
        flops["total"] += stats.value
    return dict(flops)


def stage_params(model) -> dict[str, int]:
    """Parameters per stage (``roi_heads`` split into its heads) and ``"total"``."""
    counts = {
        "backbone": model.backbone.count_params(),
        "rpn": model.rpn.count_params(),
        "total": model.count_params(),
    }
    if model.fpn is not None:
        counts["fpn"] = model.fpn.count_params()
    heads = model.roi_heads
    if heads is not None:
        if heads.shared_head is not None:
            counts["res5_head"] = heads.shared_head.count_params()
        for head in (heads.box_head, *heads.instance_heads):
            counts[head.name] = head.count_params()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["configs/mask_rcnn_r50_fpn_1x_coco.yaml", "configs/mask_rcnn_r50_c4_1x_coco.yaml"],
    )
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args()
    height = math.ceil(args.height / 32) * 32
    width = math.ceil(args.width / 32) * 32
    print(f"input {args.height}x{args.width} padded to {height}x{width}; GFLOPs = 1e9 FLOPs")
    for path in args.configs:
        config = load_config(
            path, ["model.backbone.weights=null", "model.roi_align_implementation=tf"]
        )
        model = build_float32_model(config.model)
        params = stage_params(model)
        flops = stage_flops(model, height, width)
        proposals = config.model.rpn.post_nms_topk_test
        print(f"\n{path} ({proposals} test proposals)")
        print(f"  {'stage':<14}{'params (M)':>12}{'GFLOPs':>10}")
        for stage in (*_STAGES, "other", "total"):
            if stage in params or stage in flops:
                million = params.get(stage, 0) / 1e6
                print(f"  {stage:<14}{million:>12.2f}{flops.get(stage, 0) / 1e9:>10.1f}")


if __name__ == "__main__":
    main()
