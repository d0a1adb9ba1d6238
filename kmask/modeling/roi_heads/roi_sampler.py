"""Keras layer sampling RoIs from proposals and building the box-head targets."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.ops import boxes as box_ops
from kmask.ops.matching import match
from kmask.ops.sampling import sample_balanced


@keras.saving.register_keras_serializable(package="kmask")
class ROISampler(keras.layers.Layer):
    """Fast R-CNN RoI sampling with FPN's numbers, batched with static shapes.

    The valid ground-truth boxes join the proposals (``add_gt_to_proposals``); each RoI is
    matched to its highest-IoU ground truth, foreground at IoU ``>= fg_iou_threshold``,
    background below. ``batch_size_per_image`` RoIs are sampled per image, at most
    ``positive_fraction`` foreground; foreground RoIs come first.

    Args:
      batch_size_per_image: sampled RoIs per image (512).
      positive_fraction: most foreground among them (0.25).
      fg_iou_threshold: 0.5.
      add_gt_to_proposals: append the ground-truth boxes to the proposals.
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(proposals [B, P, 4], proposal_valid [B, P] bool, gt_boxes [B, G, 4],
    gt_classes [B, G] int32 0-based (-1 padding), seeds=None)`` with ``seeds`` int64 [B]
    per-image seeds (stateless sampling with salt ``SEED_SALT``, see
    ``kmask.ops.sampling``; None: stateful) -> dict with ``S = batch_size_per_image``:
      ``rois [B, S, 4]`` float32 (y1, x1, y2, x2) pixels (zeros for padding);
      ``class_targets [B, S]`` int32: 1..K foreground class + 1, 0 background, -1 padding;
      ``matched_index [B, S]`` int32 index of the matched ground truth (meaningful for
      foreground RoIs, which the heads encode their targets from).
    """

    SEED_SALT = 3

    def __init__(
        self,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_threshold: float = 0.5,
        add_gt_to_proposals: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = float(positive_fraction)
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.add_gt_to_proposals = bool(add_gt_to_proposals)

    @property
    def max_positives(self) -> int:
        """Static upper bound on the foreground RoIs per image (the first slots)."""
        return int(self.batch_size_per_image * self.positive_fraction)

    def call(
        self,
        proposals: tf.Tensor,
        proposal_valid: tf.Tensor,
        gt_boxes: tf.Tensor,
        gt_classes: tf.Tensor,
        seeds: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        proposals = tf.cast(proposals, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        gt_valid = gt_classes >= 0
        candidates, candidate_valid = proposals, tf.cast(proposal_valid, tf.bool)
        if self.add_gt_to_proposals:
            candidates = tf.concat([proposals, gt_boxes], axis=1)
            candidate_valid = tf.concat([candidate_valid, gt_valid], axis=1)
        iou = box_ops.pairwise_iou(candidates, gt_boxes)
        matched, labels = match(iou, gt_valid, self.fg_iou_threshold, self.fg_iou_threshold)
        labels = tf.where(candidate_valid, labels, -1)
        indices, sampled = sample_balanced(
            labels, self.batch_size_per_image, self.positive_fraction, seeds, self.SEED_SALT
        )
        rois = tf.gather(candidates, indices, batch_dims=1)
        rois = tf.where((sampled >= 0)[..., None], rois, 0.0)
        matched_index = tf.gather(matched, indices, batch_dims=1)
        matched_classes = tf.gather(gt_classes, matched_index, batch_dims=1)
        foreground = sampled == 1
        class_targets = tf.where(foreground, matched_classes + 1, tf.where(sampled == 0, 0, -1))
        return {
            "rois": tf.stop_gradient(rois),
            "class_targets": tf.stop_gradient(class_targets),
            "matched_index": tf.stop_gradient(matched_index),
        }

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...], *args: Any
    ) -> dict[str, tuple[int | None, ...]]:
        """Output shapes from the proposals' shape."""
        batch, count = input_shape[0], self.batch_size_per_image
        return {
            "rois": (batch, count, 4),
            "class_targets": (batch, count),
            "matched_index": (batch, count),
        }
