"""``build_mask_rcnn``: the only place that reads the model configuration."""

from __future__ import annotations

from kmask.config import ModelConfig
from kmask.layers.anchor_generator import AnchorGenerator
from kmask.layers.proposal_generator import ProposalGenerator
from kmask.layers.roi_sampler import ROISampler
from kmask.layers.rpn_target_assigner import RPNTargetAssigner
from kmask.modeling.backbones import ResNet
from kmask.modeling.box_head import BoxHead
from kmask.modeling.fpn import FPN
from kmask.modeling.losses import Losses
from kmask.modeling.mask_head import MaskHead
from kmask.modeling.mask_rcnn import MaskRCNN
from kmask.modeling.postprocess import Postprocess
from kmask.modeling.roi_heads import ROIHeads
from kmask.modeling.rpn import RPN

# Levels the RoI heads pool from (FPN section 4.2: P2..P5; P6 serves the RPN only).
_POOLER_LEVELS = (2, 5)


def build_mask_rcnn(config: ModelConfig) -> MaskRCNN:
    """Builds an unbuilt ``MaskRCNN`` (weights are created on first call or ``build``).

    The components take the global Keras dtype policy at construction, so set
    ``keras.mixed_precision.set_global_policy("mixed_bfloat16")`` (or ``mixed_float16``)
    before calling this for mixed precision; boxes, anchors, deltas and losses stay float32.

    Raises:
      ValueError: when the FPN levels and the anchor sizes disagree, or the FPN does not
        cover the pooled levels P2..P5.
    """
    fpn_levels = config.fpn.max_level - config.fpn.min_level + 1
    if len(config.anchors.sizes) != fpn_levels:
        raise ValueError(
            f"model.anchors.sizes has {len(config.anchors.sizes)} entries but the FPN has "
            f"{fpn_levels} levels P{config.fpn.min_level}..P{config.fpn.max_level}"
        )
    if config.fpn.min_level > _POOLER_LEVELS[0] or config.fpn.max_level < _POOLER_LEVELS[1]:
        raise ValueError(
            f"the RoI heads pool from P{_POOLER_LEVELS[0]}..P{_POOLER_LEVELS[1]}; "
            f"model.fpn levels are P{config.fpn.min_level}..P{config.fpn.max_level}"
        )
    rpn_cfg, roi_cfg = config.rpn, config.roi_heads
    backbone = ResNet(
        depth=config.backbone.depth,
        freeze_at=config.backbone.freeze_at,
        norm=config.backbone.norm,
        weights=config.backbone.weights,
        name="backbone",
    )
    fpn = FPN(
        num_channels=config.fpn.num_channels,
        min_level=config.fpn.min_level,
        max_level=config.fpn.max_level,
        name="fpn",
    )
    anchor_generator = AnchorGenerator(
        sizes=config.anchors.sizes,
        aspect_ratios=config.anchors.aspect_ratios,
        offset=config.anchors.offset,
        name="anchor_generator",
    )
    rpn = RPN(
        num_anchors=len(config.anchors.aspect_ratios),
        conv_channels=config.fpn.num_channels,
        name="rpn",
    )
    proposal_generator = ProposalGenerator(
        pre_nms_topk_train=rpn_cfg.pre_nms_topk_train,
        pre_nms_topk_test=rpn_cfg.pre_nms_topk_test,
        post_nms_topk_train=rpn_cfg.post_nms_topk_train,
        post_nms_topk_test=rpn_cfg.post_nms_topk_test,
        nms_threshold=rpn_cfg.nms_threshold,
        min_box_size=rpn_cfg.min_box_size,
        box_weights=rpn_cfg.box_weights,
        name="proposal_generator",
    )
    rpn_target_assigner = RPNTargetAssigner(
        fg_iou_threshold=rpn_cfg.fg_iou_threshold,
        bg_iou_threshold=rpn_cfg.bg_iou_threshold,
        batch_size_per_image=rpn_cfg.batch_size_per_image,
        positive_fraction=rpn_cfg.positive_fraction,
        box_weights=rpn_cfg.box_weights,
        name="rpn_target_assigner",
    )
    roi_heads = ROIHeads(
        box_head=BoxHead(
            num_classes=config.num_classes,
            num_fc=config.box_head.num_fc,
            fc_dim=config.box_head.fc_dim,
            name="box_head",
        ),
        mask_head=MaskHead(
            num_classes=config.num_classes,
            num_convs=config.mask_head.num_convs,
            conv_dim=config.mask_head.conv_dim,
            name="mask_head",
        ),
        roi_sampler=ROISampler(
            batch_size_per_image=roi_cfg.batch_size_per_image,
            positive_fraction=roi_cfg.positive_fraction,
            fg_iou_threshold=roi_cfg.fg_iou_threshold,
            add_gt_to_proposals=roi_cfg.add_gt_to_proposals,
            box_weights=roi_cfg.box_weights,
            name="roi_sampler",
        ),
        postprocess=Postprocess(
            box_weights=roi_cfg.box_weights,
            score_threshold=roi_cfg.score_threshold,
            nms_threshold=roi_cfg.nms_threshold,
            detections_per_image=roi_cfg.detections_per_image,
            name="postprocess",
        ),
        box_pooler_resolution=config.box_head.pooler_resolution,
        box_pooler_sampling_ratio=config.box_head.pooler_sampling_ratio,
        mask_pooler_resolution=config.mask_head.pooler_resolution,
        mask_pooler_sampling_ratio=config.mask_head.pooler_sampling_ratio,
        pooler_min_level=_POOLER_LEVELS[0],
        pooler_max_level=_POOLER_LEVELS[1],
        roi_align_implementation=config.roi_align_implementation,
        name="roi_heads",
    )
    losses_layer = Losses(
        rpn_smooth_l1_beta=rpn_cfg.smooth_l1_beta,
        box_smooth_l1_beta=roi_cfg.smooth_l1_beta,
        rpn_cls_weight=rpn_cfg.cls_loss_weight,
        rpn_box_weight=rpn_cfg.box_loss_weight,
        cls_weight=roi_cfg.cls_loss_weight,
        box_weight=roi_cfg.box_loss_weight,
        mask_weight=roi_cfg.mask_loss_weight,
        name="losses",
    )
    return MaskRCNN(
        backbone=backbone,
        fpn=fpn,
        anchor_generator=anchor_generator,
        rpn=rpn,
        proposal_generator=proposal_generator,
        rpn_target_assigner=rpn_target_assigner,
        roi_heads=roi_heads,
        losses_layer=losses_layer,
        name="mask_rcnn",
    )
