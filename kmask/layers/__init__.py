"""Reusable Keras layers."""

from kmask.layers.anchor_generator import AnchorGenerator
from kmask.layers.bottleneck import Bottleneck
from kmask.layers.conv_stack import ConvStack
from kmask.layers.frozen_batch_norm import FrozenBatchNorm
from kmask.layers.image_normalization import ImageNormalization
from kmask.layers.multi_level_roi_align import MultiLevelROIAlign
from kmask.layers.proposal_generator import ProposalGenerator
from kmask.layers.roi_align import ROIAlign
from kmask.layers.roi_sampler import ROISampler
from kmask.layers.rpn_target_assigner import RPNTargetAssigner

__all__ = [
    "AnchorGenerator",
    "Bottleneck",
    "ConvStack",
    "FrozenBatchNorm",
    "ImageNormalization",
    "MultiLevelROIAlign",
    "ProposalGenerator",
    "ROIAlign",
    "ROISampler",
    "RPNTargetAssigner",
]
