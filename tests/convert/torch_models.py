"""Reference torchvision models with random weights for the conversion tests."""

from __future__ import annotations

import torch
from torchvision.models import detection

from kmask.convert.coco_categories import TORCHVISION_SLOTS

UNUSED_SLOTS = sorted(set(range(1, 91)) - set(TORCHVISION_SLOTS))


def random_torchvision_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """``torchvision.models.detection.<arch>`` with random weights and BN statistics."""
    torch.manual_seed(seed)
    model = getattr(detection, arch)(weights=None, weights_backbone=None).eval()
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
        if predictor.weight.shape[0] == 91:  # COCO slots (not the person-only models)
            predictor.weight[UNUSED_SLOTS] = 0.0
            predictor.bias[UNUSED_SLOTS] = -50.0
    return model
