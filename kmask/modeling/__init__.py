"""Mask R-CNN model by stage: ``backbones/`` (ResNet/ResNeXt), ``necks/`` (FPN),
``proposals/`` (RPN, segment proposals), ``roi_heads/`` (RoI stage and instance heads);
``MaskRCNN`` runs them in order and ``build_mask_rcnn`` builds them from the config."""

from kmask.modeling.backbones import ResNet
from kmask.modeling.factory import build_mask_rcnn
from kmask.modeling.mask_rcnn import MaskRCNN
from kmask.modeling.necks import FPN
from kmask.modeling.proposals import (
    RPN,
    AnchorGenerator,
    ProposalGenerator,
    RPNHead,
    RPNTargetAssigner,
    SegmentProposals,
)
from kmask.modeling.roi_heads import BoxHead, KeypointHead, MaskHead, Res5Head, ROIHeads, ROISampler

__all__ = [
    "FPN",
    "RPN",
    "AnchorGenerator",
    "BoxHead",
    "KeypointHead",
    "MaskHead",
    "MaskRCNN",
    "ProposalGenerator",
    "ROIHeads",
    "ROISampler",
    "RPNHead",
    "RPNTargetAssigner",
    "Res5Head",
    "ResNet",
    "SegmentProposals",
    "build_mask_rcnn",
]
