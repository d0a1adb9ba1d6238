"""The RPN stage: anchors, head, proposals, and in training its targets and losses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.config.rpn_config import FPN_ANCHOR_SIZES
from kmask.modeling.proposals.anchor_generator import AnchorGenerator
from kmask.modeling.proposals.proposal_generator import ProposalGenerator
from kmask.modeling.proposals.rpn_head import RPNHead
from kmask.modeling.proposals.rpn_target_assigner import RPNTargetAssigner
from kmask.ops.levels import sorted_levels
from kmask.ops.losses import rpn_losses


@keras.saving.register_keras_serializable(package="kmask")
class RPN(keras.layers.Layer):
    """Region proposal network over a feature pyramid (Faster R-CNN, FPN section 4.1).

    Owns its parts: ``anchor_generator`` (``AnchorGenerator``), ``head`` (``RPNHead``),
    ``proposal_generator`` (``ProposalGenerator``) and, for training, ``target_assigner``
    (``RPNTargetAssigner``) and the two losses:

    - ``loss_rpn_cls``: binary cross-entropy of the objectness logits of the sampled anchors,
      divided by the number of sampled anchors in the batch;
    - ``loss_rpn_box``: smooth L1 (``smooth_l1_beta``) of the positive anchors' deltas,
      summed over the four coordinates, divided by the same number.

    The arguments are the fields of ``kmask.config.RPNConfig`` (documented there).

    Call: ``(features {"Pk": [B, Hk, Wk, C]}, image_size [B, 2] int32 (h, w), targets=None,
    training=None)`` with ``targets`` the batch's ground truth (reads ``gt_boxes [B, G, 4]``
    float32 (y1, x1, y2, x2) pixels and ``gt_classes [B, G]`` int32, -1 padding, and
    ``seed [B]`` int64 when present: the anchor sampling is then a stateless function of
    each image's seed) ->
    ``(proposals, losses)`` with ``proposals = {"proposals" [B, P, 4]
    float32 pixels best first, "proposal_scores" [B, P] objectness probabilities,
    "proposal_valid" [B, P] bool}`` (P = ``post_nms_topk_train`` when ``training`` else
    ``post_nms_topk_test``; no gradient) and ``losses`` the two float32 scalars when ground
    truth is given, else ``{}``.

    Reuse: proposals (class-agnostic boxes) on any ``{"P2".."P6"}`` pyramid, for example
    as region candidates of a model of your own. Example::

        >>> import keras, numpy as np
        >>> from kmask.modeling import RPN
        >>> pyramid = {f"P{k}": keras.random.normal((1, 64 >> k, 64 >> k, 16)) for k in range(2, 7)}
        >>> rpn = RPN(pre_nms_topk_test=50, post_nms_topk_test=20, name="rpn")
        >>> proposals, losses = rpn(pyramid, np.array([[64, 64]], "int32"))
        >>> tuple(proposals["proposals"].shape), tuple(proposals["proposal_scores"].shape), losses
        ((1, 20, 4), (1, 20), {})
    """

    loss_names = ("loss_rpn_cls", "loss_rpn_box")

    def __init__(
        self,
        anchor_sizes: Sequence[float | Sequence[float]] = FPN_ANCHOR_SIZES,
        anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_offset: float = 0.5,
        anchor_rounding: bool = False,
        anchor_stride_from_image: bool = False,
        num_conv: int = 1,
        norm: str = "none",
        fg_iou_threshold: float = 0.7,
        bg_iou_threshold: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 1000,
        post_nms_topk_train: int = 2000,
        post_nms_topk_test: int = 1000,
        nms_threshold: float = 0.7,
        min_box_size: float = 0.0,
        box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        smooth_l1_beta: float = 1.0 / 9.0,
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)  # boxes stay float32; the head casts itself
        super().__init__(**kwargs)
        self.supports_jit = False  # NMS cannot be XLA-compiled
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.cls_loss_weight = float(cls_loss_weight)
        self.box_loss_weight = float(box_loss_weight)
        self.anchor_generator = AnchorGenerator(
            anchor_sizes,
            anchor_aspect_ratios,
            anchor_offset,
            anchor_rounding,
            anchor_stride_from_image,
            name="anchor_generator",
        )
        self.head = RPNHead(
            self.anchor_generator.num_anchors_per_location,
            num_conv,
            norm,
            name="head",
            dtype=self.dtype_policy.name,
        )
        self.proposal_generator = ProposalGenerator(
            pre_nms_topk_train,
            pre_nms_topk_test,
            post_nms_topk_train,
            post_nms_topk_test,
            nms_threshold,
            min_box_size,
            box_weights,
            name="proposal_generator",
        )
        self.target_assigner = RPNTargetAssigner(
            fg_iou_threshold,
            bg_iou_threshold,
            batch_size_per_image,
            positive_fraction,
            box_weights,
            name="target_assigner",
        )

    def build(
        self,
        features_shape: dict[str, tuple[int | None, ...]],
        image_size_shape: tuple[int | None, ...] | None = None,
        targets_shape: dict[str, tuple[int | None, ...]] | None = None,
    ) -> None:
        if not self.head.built:
            self.head.build(features_shape)

    def call(
        self,
        features: dict[str, tf.Tensor],
        image_size: tf.Tensor,
        targets: dict[str, tf.Tensor] | None = None,
        training: bool | None = None,
    ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        image_size = tf.cast(image_size, tf.int32)
        anchors = self.anchor_generator(features)
        objectness, deltas = self.head(features, training=training)
        proposals, scores, valid = self.proposal_generator(
            objectness, deltas, anchors, image_size, training=training
        )
        outputs = {"proposals": proposals, "proposal_scores": scores, "proposal_valid": valid}
        if targets is None:
            return outputs, {}
        keys = sorted_levels(objectness)
        indices, labels, box_targets = self.target_assigner(
            tf.concat([anchors[key] for key in keys], axis=0),
            tf.cast(targets["gt_boxes"], tf.float32),
            tf.cast(targets["gt_classes"], tf.int32),
            seeds=targets.get("seed"),
        )
        logits = tf.gather(tf.concat([objectness[k] for k in keys], axis=1), indices, batch_dims=1)
        sampled_deltas = tf.gather(
            tf.concat([deltas[k] for k in keys], axis=1), indices, batch_dims=1
        )
        loss_cls, loss_box = rpn_losses(
            logits, labels, sampled_deltas, box_targets, self.smooth_l1_beta
        )
        losses = {
            "loss_rpn_cls": self.cls_loss_weight * loss_cls,
            "loss_rpn_box": self.box_loss_weight * loss_box,
        }
        return outputs, losses
