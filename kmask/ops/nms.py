"""Batched, per-class greedy non-maximum suppression with static output shapes.

A thin wrapper around TensorFlow's fused ``CombinedNonMaxSuppression`` kernel (one op for
the whole batch, no Python loop). It cannot be XLA-compiled: layers that call it set
``supports_jit = False``.
"""

from __future__ import annotations

import tensorflow as tf


def batched_multiclass_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_per_class: int,
    max_total: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Greedy NMS run independently for every image and class.

    Args:
      boxes: [B, N, Q, 4] float32 ``(y1, x1, y2, x2)`` pixels; ``Q`` is 1 (boxes shared by
        all classes) or ``C`` (class-specific boxes).
      scores: [B, N, C] float32; only entries ``> score_threshold`` are candidates.
      max_per_class: most boxes kept per image and class.
      max_total: most boxes kept per image (over all classes), the output length.
      iou_threshold: a box is suppressed by a higher-scoring kept box of the same class
        whose IoU with it is ``> iou_threshold``.
      score_threshold: strict lower bound on candidate scores.

    Returns:
      boxes [B, max_total, 4], scores [B, max_total], classes [B, max_total] int32 (class
      column index), num_valid [B] int32; sorted by decreasing score, zero padding after
      ``num_valid``.
    """
    result = tf.image.combined_non_max_suppression(
        tf.cast(boxes, tf.float32),
        tf.cast(scores, tf.float32),
        max_output_size_per_class=max_per_class,
        max_total_size=max_total,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,
    )
    return (
        result.nmsed_boxes,
        result.nmsed_scores,
        tf.cast(result.nmsed_classes, tf.int32),
        tf.cast(result.valid_detections, tf.int32),
    )
