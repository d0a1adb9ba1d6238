"""``RPNConfig``: the region proposal network stage (``model.rpn``)."""

from __future__ import annotations

import dataclasses

# Square root of the anchor area on each level P2..P6 (FPN section 4.1: areas 32^2 ..
# 512^2): the default of ``model.rpn.anchor_sizes``, the ``RPN`` and its ``AnchorGenerator``.
FPN_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)


@dataclasses.dataclass(frozen=True)
class RPNConfig:
    """Region proposal network stage: anchors, head, proposals, targets and losses."""

    # Square root of the anchor area on each level (FPN_ANCHOR_SIZES). An entry may be a
    # list of sizes on one level: [[32, 64, 128, 256, 512]] is the single-level RPN of the
    # ResNet-C4 models (Faster R-CNN's 15 anchors per position on C4).
    anchor_sizes: tuple[float | tuple[float, ...], ...] = FPN_ANCHOR_SIZES
    # Height / width: 1:2, 1:1, 2:1 (15 anchors over the pyramid).
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Anchor centre inside its feature cell, in cells (0.5 = the cell's centre; detectron2
    # and torchvision use 0.0).
    anchor_offset: float = 0.5
    # Round the cell anchors to whole pixels (torchvision).
    anchor_rounding: bool = False
    # Each level's anchor stride per axis = padded image size // the level's size
    # (torchvision), not 2**k (the FPN paper, detectron2): P6 of an 800-pixel-high image
    # has stride 61 in torchvision.
    anchor_stride_from_image: bool = False
    # Shared 3x3 convs of the head (torchvision's v2 model: 2) and their normalization.
    num_conv: int = 1
    norm: str = "none"
    # Anchor labels (Faster R-CNN / FPN): IoU >= 0.7 positive (and each ground truth's best
    # anchors), IoU < 0.3 negative, the rest ignored.
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    # Anchors sampled per image for the loss, half positive at most (1:1).
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    # Proposals: top-k anchors per level before NMS, NMS IoU, top-k per image after NMS
    # (FPN: 2000 RoIs per image for training, 1000 for testing).
    pre_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 2000
    post_nms_topk_test: int = 1000
    nms_threshold: float = 0.7
    # Proposals whose height or width is not above this (pixels, after clipping) are dropped.
    min_box_size: float = 0.0
    # Delta weights (dy, dx, dh, dw) of the anchor -> box parameterization.
    box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # Smooth-L1 transition point of the box loss: 1/9 as Detectron and torchvision (0 = L1).
    smooth_l1_beta: float = 1.0 / 9.0
    cls_loss_weight: float = 1.0
    box_loss_weight: float = 1.0
