"""``build_mask_rcnn``: the only place that reads the model configuration."""

from __future__ import annotations

import dataclasses

import keras

from kmask.config import ModelConfig
from kmask.layers.image_normalization import ImageNormalization
from kmask.modeling.backbones import build_backbone
from kmask.modeling.box_head import BoxHead
from kmask.modeling.fpn import FPN
from kmask.modeling.keypoint_head import KeypointHead
from kmask.modeling.mask_head import MaskHead
from kmask.modeling.mask_rcnn import MaskRCNN
from kmask.modeling.roi_heads import ROIHeads
from kmask.modeling.rpn import RPN

# Levels the RoI heads pool from (FPN section 4.2: P2..P5; P6 serves the RPN only).
_POOLER_LEVELS = (2, 5)


def build_mask_rcnn(config: ModelConfig) -> MaskRCNN:
    """Builds an unbuilt ``MaskRCNN`` (weights are created on first call or ``build``).

    Each config section is passed field for field to the layer it configures
    (``model.rpn`` to ``RPN``, ``model.box_head`` to ``BoxHead``, ...); ``model.backbone.type``
    picks the backbone from the registry (``kmask.modeling.backbones``). The detector mode
    follows the heads present: Mask R-CNN, Faster R-CNN (``mask_head: null``) or RPN only
    (``box_head: null``).

    The layers take the global Keras dtype policy at construction, so set
    ``keras.mixed_precision.set_global_policy("mixed_bfloat16")`` (or ``mixed_float16``)
    before calling this for mixed precision; boxes, anchors, deltas and losses stay float32.

    Raises:
      ValueError: when the FPN levels and the anchor sizes disagree, or the FPN does not
        cover the pooled levels P2..P5.
    """
    fpn_levels = config.fpn.max_level - config.fpn.min_level + 1
    if len(config.rpn.anchor_sizes) != fpn_levels:
        raise ValueError(
            f"model.rpn.anchor_sizes has {len(config.rpn.anchor_sizes)} entries but the FPN "
            f"has {fpn_levels} levels P{config.fpn.min_level}..P{config.fpn.max_level}"
        )
    if config.fpn.min_level > _POOLER_LEVELS[0] or config.fpn.max_level < _POOLER_LEVELS[1]:
        raise ValueError(
            f"the RoI heads pool from P{_POOLER_LEVELS[0]}..P{_POOLER_LEVELS[1]}; "
            f"model.fpn levels are P{config.fpn.min_level}..P{config.fpn.max_level}"
        )
    backbone_args = dataclasses.asdict(config.backbone)
    backbone = build_backbone(backbone_args.pop("type"), **backbone_args, name="backbone")
    head_args = {
        "num_classes": config.num_classes,
        "pooler_levels": _POOLER_LEVELS,
        "roi_align_implementation": config.roi_align_implementation,
    }
    roi_heads = None
    if config.box_head is not None:
        instance_heads = []
        if config.mask_head is not None:
            instance_heads.append(
                MaskHead(**dataclasses.asdict(config.mask_head), **head_args, name="mask_head")
            )
        if config.keypoint_head is not None:
            instance_heads.append(
                KeypointHead(
                    **dataclasses.asdict(config.keypoint_head),
                    pooler_levels=_POOLER_LEVELS,
                    roi_align_implementation=config.roi_align_implementation,
                    name="keypoint_head",
                )
            )
        roi_heads = ROIHeads(
            BoxHead(**dataclasses.asdict(config.box_head), **head_args, name="box_head"),
            instance_heads,
            **dataclasses.asdict(config.roi_heads),
            name="roi_heads",
        )
    return MaskRCNN(
        normalizer=ImageNormalization(**dataclasses.asdict(config.input), name="normalizer"),
        backbone=backbone,
        fpn=FPN(**dataclasses.asdict(config.fpn), name="fpn"),
        rpn=RPN(**dataclasses.asdict(config.rpn), name="rpn"),
        roi_heads=roi_heads,
        name="mask_rcnn",
    )


def build_float32_model(config: ModelConfig) -> MaskRCNN:
    """``build_mask_rcnn`` in float32 whatever the global dtype policy, with its weights
    created: the model that checkpoints and converted weights are loaded into for
    inference."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_mask_rcnn(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.build({"images": (None, None, None, 3)})
    return model
