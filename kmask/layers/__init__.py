"""Reusable Keras layers.

kmask 0.1 also exported the RPN's and the RoI stage's parts here (``AnchorGenerator``,
``ProposalGenerator``, ``RPNTargetAssigner``, ``ROISampler``); they live with their stages
now (``kmask.modeling.proposals``, ``kmask.modeling.roi_heads``, also exported by
``kmask.modeling``). ``from kmask.layers import ROISampler`` still gives them, imported on
first access, so that loading ``kmask.layers`` never loads the modeling package above it
(the import contract in pyproject.toml).
"""

import importlib
from typing import Any

from kmask.layers.bottleneck import Bottleneck
from kmask.layers.conv_stack import ConvStack
from kmask.layers.frozen_batch_norm import FrozenBatchNorm
from kmask.layers.image_normalization import ImageNormalization
from kmask.layers.multi_level_roi_align import MultiLevelROIAlign
from kmask.layers.roi_align import ROIAlign

# kmask 0.1's names -> the package that holds them now.
_MOVED = {
    "AnchorGenerator": "kmask.modeling.proposals",
    "ProposalGenerator": "kmask.modeling.proposals",
    "RPNTargetAssigner": "kmask.modeling.proposals",
    "ROISampler": "kmask.modeling.roi_heads",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Bottleneck",
    "ConvStack",
    "FrozenBatchNorm",
    "ImageNormalization",
    "MultiLevelROIAlign",
    "ROIAlign",
]
