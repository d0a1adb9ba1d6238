"""Reusable Keras layers."""

from kmask.layers.bottleneck import Bottleneck
from kmask.layers.conv_stack import ConvStack
from kmask.layers.frozen_batch_norm import FrozenBatchNorm
from kmask.layers.image_normalization import ImageNormalization
from kmask.layers.multi_level_roi_align import MultiLevelROIAlign
from kmask.layers.roi_align import ROIAlign

__all__ = [
    "Bottleneck",
    "ConvStack",
    "FrozenBatchNorm",
    "ImageNormalization",
    "MultiLevelROIAlign",
    "ROIAlign",
]
