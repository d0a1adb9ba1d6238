"""Reference torchvision models with random weights for the conversion tests, and their
weights in detectron2's layout."""

from __future__ import annotations

import re

import numpy as np
import torch
from torchvision.models import detection

from kmask.convert.coco_categories import TORCHVISION_SLOTS


def random_torchvision_model(
    arch: str, seed: int = 0, num_classes: int | None = None
) -> torch.nn.Module:
    """``torchvision.models.detection.<arch>`` with random weights and BN statistics; every
    class slot (the 10 unused COCO slots too) gets ordinary random weights.
    ``num_classes``: the class slots (None: the architecture's COCO default)."""
    torch.manual_seed(seed)
    options = {} if num_classes is None else {"num_classes": num_classes}
    model = getattr(detection, arch)(weights=None, weights_backbone=None, **options).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        if not arch.endswith("_v2"):
            for module in model.backbone.body.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eps = 0.0  # torchvision's overwrite_eps for COCO_V1
        predictor = model.roi_heads.box_predictor.cls_score
        # Logits of a few units: scores spread over (0, 1) instead of saturating at 1.0,
        # where ties would make the choice of the 100 kept detections arbitrary.
        predictor.weight *= 0.25
    return model


def _detectron2_key(key: str) -> str:
    """torchvision v1 Mask R-CNN key -> the detectron2 model-zoo key of the same weight."""
    if key.startswith("backbone.body.conv1."):
        return key.replace("backbone.body.conv1.", "backbone.bottom_up.stem.conv1.")
    if key.startswith("backbone.body.bn1."):
        return key.replace("backbone.body.bn1.", "backbone.bottom_up.stem.conv1.norm.")
    if key.startswith("backbone.body.layer"):
        stage, block, rest = re.match(r"backbone\.body\.layer(\d)\.(\d+)\.(.*)", key).groups()
        prefix = f"backbone.bottom_up.res{int(stage) + 1}.{block}."
        rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        return prefix + rest
    renames = (
        (
            r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.",
            lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.",
        ),
        (
            r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.",
            lambda m: f"backbone.fpn_output{int(m[1]) + 2}.",
        ),
        (r"^rpn\.head\.conv\.0\.0\.", lambda m: "proposal_generator.rpn_head.conv."),
        (r"^rpn\.head\.cls_logits\.", lambda m: "proposal_generator.rpn_head.objectness_logits."),
        (r"^rpn\.head\.bbox_pred\.", lambda m: "proposal_generator.rpn_head.anchor_deltas."),
        (r"^roi_heads\.box_head\.fc6\.", lambda m: "roi_heads.box_head.fc1."),
        (r"^roi_heads\.box_head\.fc7\.", lambda m: "roi_heads.box_head.fc2."),
        (
            r"^roi_heads\.mask_head\.(\d)\.0\.",
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.",
        ),
        (r"^roi_heads\.mask_predictor\.conv5_mask\.", lambda m: "roi_heads.mask_head.deconv."),
        (
            r"^roi_heads\.keypoint_head\.(\d+)\.",
            lambda m: f"roi_heads.keypoint_head.conv_fcn{int(m[1]) // 2 + 1}.",
        ),
        (
            r"^roi_heads\.keypoint_predictor\.kps_score_lowres\.",
            lambda m: "roi_heads.keypoint_head.score_lowres.",
        ),
        (
            r"^roi_heads\.mask_predictor\.mask_fcn_logits\.",
            lambda m: "roi_heads.mask_head.predictor.",
        ),
    )
    for pattern, replacement in renames:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


def detectron2_arrays(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torchvision state_dict (NumPy arrays) as the detectron2 model-zoo ``.pkl`` of the
    same weights (its ``"model"`` dict): 80 classes (or the keypoint model's one),
    background score last, no background deltas or mask."""
    rows = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
    slots = list(TORCHVISION_SLOTS) if rows == 91 else list(range(1, rows))
    arrays = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("roi_heads.box_predictor.cls_score."):
            value = value[[*slots, 0]]
        elif key.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value.reshape(rows, 4, *value.shape[1:])[slots]
            value = value.reshape(4 * len(slots), *value.shape[2:])
        elif key.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            value = value[slots]
        arrays[_detectron2_key(key)] = value
    return arrays
