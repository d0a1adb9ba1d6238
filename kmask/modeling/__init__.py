"""Mask R-CNN model components."""

from kmask.modeling.backbones import ResNet
from kmask.modeling.fpn import FPN
from kmask.modeling.factory import build_mask_rcnn
from kmask.modeling.mask_rcnn import MaskRCNN

__all__ = ["FPN", "MaskRCNN", "ResNet", "build_mask_rcnn"]
