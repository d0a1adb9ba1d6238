"""Keras layer labelling and sampling anchors for the RPN loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.ops import boxes as box_ops
from kmask.ops.matching import match
from kmask.ops.sampling import sample_balanced


@keras.saving.register_keras_serializable(package="kmask")
class RPNTargetAssigner(keras.layers.Layer):
    """RPN training targets (Faster R-CNN / FPN anchor labelling), batched.

    An anchor is positive with IoU ``>= fg_iou_threshold`` with a ground truth or when it
    reaches a ground truth's highest IoU (ties included), negative with IoU
    ``< bg_iou_threshold`` for all ground truths, ignored otherwise. ``batch_size_per_image``
    anchors are sampled per image, at most ``positive_fraction`` of them positive.

    Args:
      fg_iou_threshold / bg_iou_threshold: 0.7 / 0.3.
      batch_size_per_image: sampled anchors per image (256).
      positive_fraction: most positives among them (0.5).
      box_weights: delta weights (dy, dx, dh, dw) of the RPN parameterization.
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(anchors [A, 4], gt_boxes [B, G, 4], gt_classes [B, G] int32 (-1 padding),
    seeds=None)`` with ``seeds`` int64 [B] per-image seeds (stateless sampling with salt
    ``SEED_SALT``, see ``kmask.ops.sampling``; None: stateful) ->
    ``(indices [B, S] int32 anchor indices, labels [B, S] int32 1/0/-1 (padding),
    box_targets [B, S, 4] float32 encoded deltas)`` with ``S = batch_size_per_image``.
    """

    SEED_SALT = 2

    def __init__(
        self,
        fg_iou_threshold: float = 0.7,
        bg_iou_threshold: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_threshold = float(bg_iou_threshold)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = float(positive_fraction)
        self.box_weights = tuple(float(w) for w in box_weights)

    def call(
        self,
        anchors: tf.Tensor,
        gt_boxes: tf.Tensor,
        gt_classes: tf.Tensor,
        seeds: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_valid = gt_classes >= 0
        iou = box_ops.pairwise_iou(anchors[None], gt_boxes)  # [B, A, G]
        matched, labels = match(
            iou,
            gt_valid,
            self.fg_iou_threshold,
            self.bg_iou_threshold,
            allow_low_quality_matches=True,
        )
        indices, sampled_labels = sample_balanced(
            labels, self.batch_size_per_image, self.positive_fraction, seeds, self.SEED_SALT
        )
        sampled_anchors = tf.gather(anchors, indices)
        sampled_gt = tf.gather(gt_boxes, tf.gather(matched, indices, batch_dims=1), batch_dims=1)
        targets = box_ops.encode(sampled_gt, sampled_anchors, self.box_weights)
        targets = tf.where((sampled_labels == 1)[..., None], targets, 0.0)
        return (
            tf.stop_gradient(indices),
            tf.stop_gradient(sampled_labels),
            tf.stop_gradient(targets),
        )

    def compute_output_shape(
        self,
        input_shape: tuple[int | None, ...],
        gt_boxes_shape: tuple[int | None, ...] = (None,),
        *args: Any,
    ) -> tuple[tuple[int | None, ...], ...]:
        """Output shapes from the anchors' and ground truth's shapes."""
        batch, count = gt_boxes_shape[0], self.batch_size_per_image
        return (batch, count), (batch, count), (batch, count, 4)
