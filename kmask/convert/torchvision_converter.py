"""torchvision checkpoints -> kmask: Mask / Faster R-CNN ResNet-50-FPN (v1, v2), ResNets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from kmask.convert.coco_categories import (
    COCO_PERSON_CATEGORY,
    TORCHVISION_COCO_CATEGORIES,
)
from kmask.convert.converter import Converter
from kmask.convert.weight_mapping import WeightMapping

_INPUT = {
    "channel_order": "RGB",
    "pixel_scale": 1.0 / 255.0,
    "pixel_mean": [0.485, 0.456, 0.406],
    "pixel_std": [0.229, 0.224, 0.225],
}
_RESNET = {"norm": "frozen_bn", "stride_in_1x1": False, "conv_bias": False}
_DATA = {"min_size": [800], "max_size": 1333, "size_divisibility": 32, "resize_rounding": "floor"}


def _detector(version: int, masks: bool) -> dict[str, Any]:
    """The config values of torchvision's ``*rcnn_resnet50_fpn`` (v1) / ``_v2`` models."""
    v2 = version == 2
    pooler = {"pooler": {"sampling_ratio": 2, "aligned": False}}
    head_norm = {"norm": "bn"} if v2 else {}
    model: dict[str, Any] = {
        "input": dict(_INPUT),
        # COCO_V1 weights run their frozen BN with eps 0 (torchvision's overwrite_eps);
        # the v2 weights with the default 1e-5.
        "backbone": {"resnet": {**_RESNET, "depth": 50, "norm_epsilon": 1e-5 if v2 else 0.0}},
        "fpn": {"norm": "bn"} if v2 else {},
        "rpn": {
            "anchor_offset": 0.0,
            "anchor_rounding": True,
            "anchor_stride_from_image": True,  # P6: padded size // map size, not 64
            "num_conv": 2 if v2 else 1,
            "min_box_size": 1e-3,
        },
        "box_head": {
            **pooler,
            **head_norm,
            "num_conv": 4 if v2 else 0,
            "num_fc": 1 if v2 else 2,
            "predict_background": True,
            "smooth_l1_beta": 1.0 / 9.0,
            "min_box_size": 1e-2,
        },
        "mask_head": {**pooler, **head_norm, "predict_background": True} if masks else None,
    }
    # Masks are pasted as torchvision does (kmask.ops.masks.paste_masks).
    return {"model": model, "data": dict(_DATA), "eval": {"mask_paste": "torchvision"}}


def _backbone(depth: int, groups: int = 1, width_per_group: int = 64) -> dict[str, Any]:
    resnet = {
        **_RESNET,
        "depth": depth,
        "norm_epsilon": 1e-5,
        "groups": groups,
        "width_per_group": width_per_group,
    }
    return {"model": {"input": dict(_INPUT), "backbone": {"resnet": resnet}}, "data": dict(_DATA)}


def _keypoint_detector() -> dict[str, Any]:
    """The config values of torchvision's ``keypointrcnn_resnet50_fpn``: the v1 Faster
    R-CNN with ``KeypointRCNNHeads`` (RoIAlign 14x14, 2 samples, not aligned; 8 convs of
    512) and ``KeypointRCNNPredictor`` (deconv 4x4 s2 to 17 maps, 2x bilinear), trained on
    COCO's pixel indices as coordinates (no 0.5 px offset: ``heatmap_coordinates``)."""
    values = _detector(1, masks=False)
    values["model"]["keypoint_head"] = {
        "num_keypoints": 17,
        "pooler": {"sampling_ratio": 2, "aligned": False},
        "heatmap_coordinates": "pixel_index",
    }
    return values


_RENAMES = (
    # Keys of checkpoints saved before torchvision wrapped these convs in
    # Conv2dNormActivation (the released COCO_V1 files have them).
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
)
_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")
_RESNET_LAYER = re.compile(r"^conv(\d)_block(\d+)_(\d)_(conv|bn)$")


class TorchvisionConverter(Converter):
    """Converts torchvision ``state_dict`` files (``.pth``) to kmask models.

    Architectures (``--arch``): ``maskrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn_v2``,
    ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2`` (COCO detectors) and
    ``resnet50``, ``resnet101``, ``resnext101_32x8d`` (ImageNet backbones).

    torchvision's conventions, reproduced in the config (``ARCHITECTURES``): RGB input
    scaled to 0..1 with the ImageNet mean and std; resized sides floored; stride on the
    3x3 conv ("v1.5"), convs without bias; frozen BN with eps 0 for the v1 COCO weights;
    anchors at offset 0 and rounded to whole pixels; RPN box weights (1, 1, 1, 1), 1000
    proposals per level before and 1000 per image after NMS at test time, proposals
    smaller than 1e-3 px dropped; RoIAlign with ``aligned=False`` and 2 samples per bin;
    box and mask predictors with a background slot (first); detections under 1e-2 px
    dropped; masks pasted into whole-pixel boxes (``eval.mask_paste``); the v2 model's BN
    in FPN and heads, two RPN convs and the 4-conv + 1-fc box head. The first fc reads
    NCHW-flattened features: its input rows are reordered to NHWC. Box deltas are
    reordered from (dx, dy, dw, dh) to (dy, dx, dh, dw).

    Classes: every slot of the checkpoint is a class, in slot order, background first, so
    the softmax, the per-class boxes and the per-class NMS are torchvision's for any
    weights. A COCO checkpoint has 91 slots (slot = COCO id, 0 background): 90 classes
    with ids 1..90 (``TORCHVISION_COCO_CATEGORIES``), 10 of them ids without a COCO
    category, named "N/A" as torchvision names them and marked ``unused``. The released
    weights never detect those (they were never targets); a detection of one is
    reported as torchvision reports it, and COCO evaluation ignores it (the ground truth
    has no such category). A checkpoint with another number of slots (a model fine-tuned
    on other data) has classes ``class_k``; the keypoint model's one class is person.
    """

    SOURCE = "torchvision"
    ARCHITECTURES = {
        "maskrcnn_resnet50_fpn": _detector(1, masks=True),
        "maskrcnn_resnet50_fpn_v2": _detector(2, masks=True),
        "fasterrcnn_resnet50_fpn": _detector(1, masks=False),
        "fasterrcnn_resnet50_fpn_v2": _detector(2, masks=False),
        "keypointrcnn_resnet50_fpn": _keypoint_detector(),
        "resnet50": _backbone(50),
        "resnet101": _backbone(101),
        "resnext101_32x8d": _backbone(101, groups=32, width_per_group=8),
    }
    DESCRIPTIONS = {
        "maskrcnn_resnet50_fpn": "MaskRCNN_ResNet50_FPN_Weights.COCO_V1: box AP 37.9, mask AP "
        "34.6 (maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth)",
        "maskrcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1: box AP 47.4, "
        "mask AP 41.8 (maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth)",
        "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights.COCO_V1: box AP 37.0 "
        "(fasterrcnn_resnet50_fpn_coco-258fb6c6.pth)",
        "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1: box AP 46.7 "
        "(fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth)",
        "keypointrcnn_resnet50_fpn": "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1: box AP 54.6, "
        "keypoint AP 65.0 (keypointrcnn_resnet50_fpn_coco-fc266e95.pth); one class, person",
        "resnet50": "ResNet50_Weights.IMAGENET1K_V1 (resnet50-0676ba61.pth) or _V2",
        "resnet101": "ResNet101_Weights.IMAGENET1K_V1 (resnet101-63fe2227.pth) or _V2",
        "resnext101_32x8d": "ResNeXt101_32X8D_Weights.IMAGENET1K_V1 "
        "(resnext101_32x8d-8ba56ff5.pth)",
    }
    BACKBONES = ("resnet50", "resnet101", "resnext101_32x8d")
    # ImageNet files carry the classifier; detector files BN counters (random-init models).
    IGNORED_KEYS = (r"num_batches_tracked$", r"^fc\.(weight|bias)$")

    def rename(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        renamed = {}
        for key, value in arrays.items():
            for pattern, replacement in _RENAMES:
                key = pattern.sub(replacement, key)
            match = _MASK_FCN.match(key)
            if match:
                key = f"roi_heads.mask_head.{int(match[1]) - 1}.0.{match[2]}"
            renamed[key] = value
        return renamed

    def class_rows(self, mapping: WeightMapping) -> tuple[list[int], list[int], list[int]]:
        slots = mapping.shape("roi_heads.box_predictor.cls_score.weight", ndim=2)[0]
        rows = list(range(slots))  # background first, with background deltas and mask
        return rows, rows, rows

    def backbone_key(self, layer_name: str) -> str:
        prefix = "" if self.backbone_only else "backbone.body."
        if layer_name == "conv1_conv":
            return prefix + "conv1"
        if layer_name == "conv1_bn":
            return prefix + "bn1"
        match = _RESNET_LAYER.match(layer_name)
        if match is None:
            raise ValueError(f"no torchvision name for ResNet layer {layer_name!r}")
        stage, block, index, kind = int(match[1]), int(match[2]), int(match[3]), match[4]
        block_key = f"{prefix}layer{stage - 1}.{block - 1}"
        if index == 0:
            return f"{block_key}.downsample.{0 if kind == 'conv' else 1}"
        return f"{block_key}.{kind}{index}"

    def fpn_keys(self, index: int, level: int, output: bool) -> tuple[str, str]:
        block = f"backbone.fpn.{'layer' if output else 'inner'}_blocks.{index}"
        return f"{block}.0", f"{block}.1"

    def rpn_keys(self, num_conv: int) -> tuple[list[tuple[str, str]], str, str]:
        convs = [(f"rpn.head.conv.{i}.0", f"rpn.head.conv.{i}.1") for i in range(num_conv)]
        return convs, "rpn.head.cls_logits", "rpn.head.bbox_pred"

    def box_head_keys(self, num_conv: int, num_fc: int) -> tuple[list[tuple[str, str]], list[str]]:
        if num_conv == 0:  # TwoMLPHead
            return [], [f"roi_heads.box_head.fc{6 + j}" for j in range(num_fc)]
        # FastRCNNConvFCHead: convs, Flatten, then (Linear, ReLU) per fc.
        convs = [
            (f"roi_heads.box_head.{i}.0", f"roi_heads.box_head.{i}.1") for i in range(num_conv)
        ]
        return convs, [f"roi_heads.box_head.{num_conv + 1 + 2 * j}" for j in range(num_fc)]

    def box_predictor_keys(self) -> tuple[str, str]:
        return "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"

    def categories(self, num_classes: int) -> list[dict[str, Any]]:
        if self.arch == "keypointrcnn_resnet50_fpn":
            return [dict(COCO_PERSON_CATEGORY)]
        if num_classes == len(TORCHVISION_COCO_CATEGORIES):
            return [dict(c) for c in TORCHVISION_COCO_CATEGORIES]
        return super().categories(num_classes)
