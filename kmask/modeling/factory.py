"""``build_mask_rcnn``: the only place that reads the model configuration."""

from __future__ import annotations

import dataclasses

import keras

from kmask.config import ModelConfig, layer_arguments
from kmask.layers.image_normalization import ImageNormalization
from kmask.modeling.backbones import build_backbone
from kmask.modeling.inference_precision import InferencePrecision
from kmask.modeling.mask_rcnn import MaskRCNN
from kmask.modeling.necks.fpn import FPN
from kmask.modeling.proposals.rpn import RPN
from kmask.modeling.proposals.segment_proposals import SegmentProposals
from kmask.modeling.roi_heads.box_head import BoxHead
from kmask.modeling.roi_heads.instance_head import HeadContext, instance_head_class
from kmask.modeling.roi_heads.res5_head import Res5Head
from kmask.modeling.roi_heads.roi_heads import ROIHeads

# Levels the RoI heads pool from (FPN section 4.2: P2..P5; P6 serves the RPN only).
_POOLER_LEVELS = (2, 5)


def build_mask_rcnn(config: ModelConfig) -> MaskRCNN:
    """Builds an unbuilt ``MaskRCNN`` (weights are created on first call or ``build``).

    Each config section is passed field for field to the layer it configures
    (``model.rpn`` to ``RPN``, ``model.box_head`` to ``BoxHead``, ...); ``model.backbone.type``
    picks the backbone from the registry (``kmask.modeling.backbones``); each instance head
    that is set (``config.instance_heads``: ``model.mask_head``, ``model.keypoint_head``,
    any registered head's section) is built by its registered class's ``from_section``.
    The detector mode follows the heads present: Mask R-CNN, Faster R-CNN (``mask_head:
    null``) or RPN only (``box_head: null``); with ``fpn: null`` and ``res5_head`` it is
    the ResNet-C4 variant (Mask R-CNN figure 3, left): RPN on C4, conv5 per RoI shared by
    the heads.

    The layers take the global Keras dtype policy at construction, so set
    ``keras.mixed_precision.set_global_policy("mixed_bfloat16")`` (or ``mixed_float16``)
    before calling this for mixed precision; boxes, anchors, deltas and losses stay float32.

    Raises:
      ValueError: when the RPN's levels and the anchor sizes disagree, or the FPN does not
        cover the pooled levels P2..P5.
    """
    if config.fpn is None:
        levels = [f"C{level}" for level in config.backbone.out_levels]
    else:
        levels = [f"P{level}" for level in range(config.fpn.min_level, config.fpn.max_level + 1)]
    if len(config.rpn.anchor_sizes) != len(levels):
        raise ValueError(
            f"model.rpn.anchor_sizes has {len(config.rpn.anchor_sizes)} entries but the RPN "
            f"runs on {len(levels)} levels {levels} (one entry per level)"
        )
    if config.fpn is not None and (
        config.fpn.min_level > _POOLER_LEVELS[0] or config.fpn.max_level < _POOLER_LEVELS[1]
    ):
        raise ValueError(
            f"the RoI heads pool from P{_POOLER_LEVELS[0]}..P{_POOLER_LEVELS[1]}; "
            f"model.fpn levels are P{config.fpn.min_level}..P{config.fpn.max_level}"
        )
    backbone = build_backbone(
        config.backbone.type, **config.backbone.layer_arguments(), name="backbone"
    )
    shared_head = None
    if config.res5_head is not None:
        resnet = config.backbone.resnet  # conv5's layout is the backbone's, but its depth
        shared_head = Res5Head(
            **layer_arguments(config.res5_head),
            **{key: value for key, value in dataclasses.asdict(resnet).items() if key != "depth"},
            roi_align_implementation=config.roi_align_implementation,
            name="res5_head",
        )
        shared_head.freeze(config.backbone.freeze_at)  # conv5 is the backbone's stage 5
        if config.backbone.weights is not None:
            shared_head.load_backbone_weights(config.backbone.weights, resnet.depth)
    # Heads under a shared head run on its pooled maps (no pooler of their own).
    context = HeadContext(
        num_classes=config.num_classes,
        pooler_levels=None if shared_head is not None else _POOLER_LEVELS,
        roi_align_implementation=config.roi_align_implementation,
    )
    roi_heads = None
    if config.box_head is not None:
        instance_heads = [
            instance_head_class(section).from_section(values, context)
            for section, values in config.instance_heads.items()
        ]
        roi_heads = ROIHeads(
            BoxHead(
                **layer_arguments(config.box_head),
                **dataclasses.asdict(context),
                name=BoxHead.section,
            ),
            instance_heads,
            **dataclasses.asdict(config.roi_heads),
            shared_head=shared_head,
            name="roi_heads",
        )
    return MaskRCNN(
        normalizer=ImageNormalization(**dataclasses.asdict(config.input), name="normalizer"),
        backbone=backbone,
        fpn=None if config.fpn is None else FPN(**dataclasses.asdict(config.fpn), name="fpn"),
        rpn=_proposal_stage(config),
        roi_heads=roi_heads,
        name="mask_rcnn",
    )


def _proposal_stage(config: ModelConfig) -> keras.layers.Layer:
    """The RPN, or the FPN segment proposal stage in its place (``model.segment_proposals``,
    one canonical scale per FPN level)."""
    if config.segment_proposals is None:
        return RPN(**dataclasses.asdict(config.rpn), name="rpn")
    scales = config.segment_proposals.canonical_scales
    fpn = config.fpn
    if fpn is None or len(scales) != fpn.max_level - fpn.min_level + 1:
        levels = "no FPN" if fpn is None else f"FPN levels P{fpn.min_level}..P{fpn.max_level}"
        raise ValueError(
            f"model.segment_proposals.canonical_scales has {len(scales)} entries, one per "
            f"pyramid level, but the model has {levels}"
        )
    return SegmentProposals(
        **dataclasses.asdict(config.segment_proposals), name="segment_proposals"
    )


def build_float32_model(config: ModelConfig) -> MaskRCNN:
    """``build_mask_rcnn`` in float32 whatever the global dtype policy, with its weights
    created: the model that converted weights are written from."""
    return build_inference_model(config, "float32")


def build_inference_model(config: ModelConfig, precision: str = "float32") -> MaskRCNN:
    """``build_mask_rcnn`` under ``precision``'s dtype policy whatever the global one
    (``InferencePrecision``: float32, bfloat16, float16 or auto), with its weights created
    (float32 variables in every precision): the model checkpoints are loaded into for
    inference.

    Raises:
      ValueError: an unknown precision.
    """
    policy = InferencePrecision.resolve(precision).policy
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_mask_rcnn(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.build({"images": (None, None, None, 3)})
    return model
