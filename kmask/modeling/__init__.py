"""Mask R-CNN model: stages (backbone, FPN, RPN, RoI heads), heads and the factory."""

from kmask.modeling.backbones import ResNet
from kmask.modeling.box_head import BoxHead
from kmask.modeling.factory import build_mask_rcnn
from kmask.modeling.fpn import FPN
from kmask.modeling.keypoint_head import KeypointHead
from kmask.modeling.mask_head import MaskHead
from kmask.modeling.mask_rcnn import MaskRCNN
from kmask.modeling.res5_head import Res5Head
from kmask.modeling.roi_heads import ROIHeads
from kmask.modeling.rpn import RPN
from kmask.modeling.rpn_head import RPNHead

__all__ = [
    "FPN",
    "RPN",
    "BoxHead",
    "KeypointHead",
    "MaskHead",
    "MaskRCNN",
    "ROIHeads",
    "Res5Head",
    "RPNHead",
    "ResNet",
    "build_mask_rcnn",
]
