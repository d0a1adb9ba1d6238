"""Loss terms shared by the stages (float32)."""

from __future__ import annotations

import tensorflow as tf

from kmask.ops.masks import select_class


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise smooth L1 (Fast R-CNN): ``0.5 x^2 / beta`` if ``|x| < beta`` else
    ``|x| - 0.5 beta``; ``beta = 0`` is plain L1."""
    absolute = tf.abs(diff)
    if beta <= 0.0:
        return absolute
    return tf.where(absolute < beta, 0.5 * tf.square(absolute) / beta, absolute - 0.5 * beta)


def masked_mean(values: tf.Tensor, mask: tf.Tensor, count: tf.Tensor | None = None) -> tf.Tensor:
    """``sum(values[mask]) / max(count, 1)``; ``count`` defaults to the number of True in
    ``mask``. Exactly zero (with a zero gradient) when nothing is selected."""
    mask = tf.cast(mask, tf.bool)
    if count is None:
        count = tf.reduce_sum(tf.cast(mask, tf.float32))
    total = tf.reduce_sum(tf.where(mask, tf.cast(values, tf.float32), 0.0))
    return total / tf.maximum(tf.cast(count, tf.float32), 1.0)


def rpn_losses(
    logits: tf.Tensor, labels: tf.Tensor, deltas: tf.Tensor, targets: tf.Tensor, beta: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """The RPN's objectness and box losses on sampled anchors.

    Args:
      logits: [B, S] objectness logits of the sampled anchors.
      labels: [B, S] int32: 1 positive, 0 negative, -1 padding.
      deltas / targets: [B, S, 4] predicted and target deltas (targets used where positive).
      beta: smooth-L1 transition point.

    Returns:
      ``(cls, box)``: binary cross-entropy summed over sampled anchors, and smooth L1 of the
      positives summed over anchors and coordinates, both divided by the number of sampled
      anchors in the batch (at least 1).
    """
    sampled = labels >= 0
    count = tf.reduce_sum(tf.cast(sampled, tf.float32))
    bce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(labels == 1, tf.float32), logits=tf.cast(logits, tf.float32)
    )
    box = tf.reduce_sum(smooth_l1(tf.cast(deltas, tf.float32) - targets, beta), axis=-1)
    return masked_mean(bce, sampled, count), masked_mean(box, labels == 1, count)


def fast_rcnn_losses(
    class_logits: tf.Tensor,
    box_deltas: tf.Tensor,
    class_targets: tf.Tensor,
    box_targets: tf.Tensor,
    beta: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The box head's classification and box losses on sampled RoIs.

    Args:
      class_logits: [B, S, K + 1] (column 0 background).
      box_deltas: [B, S, K, 4] per foreground class.
      class_targets: [B, S] int32: k + 1 for class k, 0 background, -1 padding.
      box_targets: [B, S, 4] encoded ground truth (used where foreground).
      beta: smooth-L1 transition point (0 = L1).

    Returns:
      ``(cls, box)``: softmax cross-entropy averaged over sampled RoIs, and smooth L1 of the
      ground-truth class's deltas of foreground RoIs summed over coordinates and divided by
      the number of sampled RoIs.
    """
    sampled = class_targets >= 0
    count = tf.reduce_sum(tf.cast(sampled, tf.float32))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(class_targets, 0), logits=tf.cast(class_logits, tf.float32)
    )
    foreground = class_targets > 0
    deltas = tf.gather(
        tf.cast(box_deltas, tf.float32), tf.maximum(class_targets - 1, 0), batch_dims=2
    )
    box = tf.reduce_sum(smooth_l1(deltas - box_targets, beta), axis=-1)
    return masked_mean(ce, sampled, count), masked_mean(box, foreground, count)


def mask_loss(logits: tf.Tensor, targets: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """Per-pixel sigmoid cross-entropy on each RoI's own class map (Mask R-CNN's decoupling).

    Args:
      logits: [B, Q, m, m, K] mask logits.
      targets: [B, Q, m, m] {0, 1}.
      classes: [B, Q] int32 0-based class of each RoI, -1 for none.

    Returns:
      The mean over the pixels of RoIs with a class (0 when there are none).
    """
    chosen = select_class(tf.cast(logits, tf.float32), classes)  # [B, Q, m, m]
    bce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.float32), logits=chosen
    )
    has_mask = tf.broadcast_to((classes >= 0)[:, :, None, None], tf.shape(bce))
    return masked_mean(bce, has_mask)


def keypoint_loss(
    logits: tf.Tensor,
    targets: tf.Tensor,
    valid: tf.Tensor,
    normalizer: float | tf.Tensor | None = None,
) -> tf.Tensor:
    """Cross-entropy of the ``m^2``-way softmax of each labelled keypoint (Mask R-CNN
    section 5: one-hot target per visible keypoint).

    Args:
      logits: [B, Q, m, m, K] heatmap logits.
      targets: [B, Q, K] int32 flat target cell ``i * m + j``.
      valid: [B, Q, K] bool, keypoints with a target.
      normalizer: None divides the sum by the number of valid keypoints in the batch
        (torchvision; detectron2's default ``NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS``);
        a number divides by it instead (detectron2's fixed alternative).

    Returns:
      float32 scalar; exactly 0 (zero gradient) without a valid keypoint.
    """
    logits = tf.cast(logits, tf.float32)
    maps = tf.transpose(logits, [0, 1, 4, 2, 3])  # [B, Q, K, m, m]
    flat = tf.reshape(maps, tf.concat([tf.shape(maps)[:3], [-1]], axis=0))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=flat)
    if normalizer is None:
        return masked_mean(ce, valid)
    return tf.reduce_sum(tf.where(valid, ce, 0.0)) / tf.cast(normalizer, tf.float32)
