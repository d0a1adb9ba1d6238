"""Batched, per-class greedy non-maximum suppression with static output shapes.

A thin wrapper around TensorFlow's fused ``CombinedNonMaxSuppression`` kernel (one op for
the whole batch, no Python loop). It cannot be XLA-compiled: layers that call it set
``supports_jit = False``.

LiteRT has no ``CombinedNonMaxSuppression`` builtin. Inside ``nms_implementation("single_class")``
(the TFLite export traces the model there) the same suppression is built from one
single-class ``NonMaxSuppressionV5`` per image and class (LiteRT's builtin
``NON_MAX_SUPPRESSION_V5``) and a ``top_k`` over their results: the same detections, for
graphs whose batch size and class count are static.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import tensorflow as tf

NMS_IMPLEMENTATIONS = ("combined", "single_class")
_IMPLEMENTATION = contextvars.ContextVar("kmask_nms_implementation", default="combined")


@contextlib.contextmanager
def nms_implementation(name: str) -> Iterator[None]:
    """``batched_multiclass_nms`` traced inside this context uses ``name``: ``"combined"``
    (the default: TensorFlow's fused op) or ``"single_class"`` (one single-class NMS op per
    image and class, static batch and class count; LiteRT builtins only)."""
    if name not in NMS_IMPLEMENTATIONS:
        raise ValueError(f"nms implementation must be one of {NMS_IMPLEMENTATIONS}, got {name!r}")
    token = _IMPLEMENTATION.set(name)
    try:
        yield
    finally:
        _IMPLEMENTATION.reset(token)


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
    if _IMPLEMENTATION.get() == "single_class":
        return _single_class_nms(
            boxes, scores, max_per_class, max_total, iou_threshold, score_threshold
        )
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


def _single_class_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_per_class: int,
    max_total: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``batched_multiclass_nms`` as one ``NonMaxSuppressionV5`` (padded to
    ``max_per_class``) per image and class, then the ``max_total`` best of the kept boxes
    by score (``top_k``). Same arguments and outputs; ``B`` and ``C`` must be static."""
    batch, classes, shared = boxes.shape[0], scores.shape[2], boxes.shape[2]
    if batch is None or classes is None or shared is None:
        raise ValueError(
            "single-class NMS needs a static batch size and class count, got boxes "
            f"{boxes.shape} and scores {scores.shape}"
        )
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    slots = classes * max_per_class
    lowest = tf.constant(float("-inf"))
    results = []
    for b in range(batch):
        kept_boxes, kept_scores, kept_valid = [], [], []
        for c in range(classes):
            class_boxes = boxes[b, :, min(c, shared - 1)]
            index, selected, count = tf.raw_ops.NonMaxSuppressionV5(
                boxes=class_boxes,
                scores=scores[b, :, c],
                max_output_size=max_per_class,
                iou_threshold=iou_threshold,
                score_threshold=score_threshold,
                soft_nms_sigma=0.0,
                pad_to_max_output_size=True,
            )
            valid = tf.range(max_per_class) < count
            # The padding indices are 0: one zero row more keeps them in range for N = 0.
            kept_boxes.append(tf.gather(tf.pad(class_boxes, [[0, 1], [0, 0]]), index))
            kept_scores.append(tf.where(valid, selected, lowest))
            kept_valid.append(valid)
        all_scores = tf.concat(kept_scores, 0)  # [C * max_per_class], class-major
        if slots < max_total:
            all_scores = tf.pad(all_scores, [[0, max_total - slots]], constant_values=lowest)
        top_scores, order = tf.math.top_k(all_scores, k=max_total)
        order = tf.minimum(order, slots - 1)
        valid = tf.logical_and(tf.gather(tf.concat(kept_valid, 0), order), top_scores > lowest)
        results.append(
            (
                tf.where(valid[:, None], tf.gather(tf.concat(kept_boxes, 0), order), 0.0),
                tf.where(valid, top_scores, 0.0),
                tf.where(valid, order // max_per_class, 0),
                tf.reduce_sum(tf.cast(valid, tf.int32)),
            )
        )
    boxes_out, scores_out, classes_out, counts = (tf.stack(parts) for parts in zip(*results))
    return boxes_out, scores_out, tf.cast(classes_out, tf.int32), counts
