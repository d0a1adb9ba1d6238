"""Assigning predictions (anchors or RoIs) to ground-truth boxes by IoU, batched.

Labels: ``1`` foreground, ``0`` background, ``-1`` ignored. Padded ground truth (``valid``
false) never matches; an image without valid ground truth labels everything background.
"""

from __future__ import annotations

import tensorflow as tf


def match(
    iou: tf.Tensor,
    gt_valid: tf.Tensor,
    fg_threshold: float,
    bg_threshold: float,
    allow_low_quality_matches: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Matches each row (anchor / RoI) to its highest-IoU ground truth column.

    Args:
      iou: [B, N, G] float32 IoU of N predictions with G (padded) ground-truth boxes.
      gt_valid: [B, G] bool, false for padding.
      fg_threshold: rows with max IoU ``>= fg_threshold`` are foreground (1).
      bg_threshold: rows with max IoU ``< bg_threshold`` are background (0); rows in
        between are ignored (-1). ``bg_threshold == fg_threshold`` leaves no ignored band.
      allow_low_quality_matches: also mark foreground, for every valid ground truth with a
        positive best IoU, all rows reaching that best IoU (ties included), as in the RPN
        rule "the anchor with the highest IoU for a given ground-truth box" (Faster R-CNN).
        Such rows keep their own argmax ground truth as match.

    Returns:
      matched_index: [B, N] int32 index of the best ground truth (0 when none is valid).
      labels: [B, N] int32 in {1, 0, -1}.
    """
    iou = tf.where(gt_valid[:, None, :], tf.cast(iou, tf.float32), -1.0)
    if iou.shape[2] == 0:  # no ground-truth slots at all
        iou = tf.fill(tf.concat([tf.shape(iou)[:2], [1]], axis=0), -1.0)
    max_iou = tf.reduce_max(iou, axis=2)  # [B, N]; -1 when no valid gt
    matched_index = tf.argmax(iou, axis=2, output_type=tf.int32)
    labels = tf.where(
        max_iou >= fg_threshold,
        1,
        tf.where(max_iou < bg_threshold, 0, -1),
    )
    if allow_low_quality_matches:
        best_per_gt = tf.reduce_max(iou, axis=1, keepdims=True)  # [B, 1, G]
        is_best = (iou == best_per_gt) & (best_per_gt > 0.0) & gt_valid[:, None, :]
        labels = tf.where(tf.reduce_any(is_best, axis=2), 1, labels)
    return matched_index, tf.cast(labels, tf.int32)
