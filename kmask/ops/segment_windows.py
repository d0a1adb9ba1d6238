"""Sliding windows of FPN segment proposals (FPN paper, section 6 and appendix A): their
geometry, the assignment of ground truth to them, and boxes of decoded masks.

A *head* is one MLP on one pyramid level: with ``n`` MLPs per level (the paper: ``n = 2``,
a 5x5 one and a 7x7 one for half octaves) head ``h = i * n + j`` is MLP ``j`` on the
``i``-th level, and its *canonical scale* is ``canonical_scales[i] * 2 ** (j / n)``
(paper: 32, 32 sqrt 2, 64, ..., 512, 512 sqrt 2 pixels on P2..P6). Each feature cell
``(r, c)`` of a stride-``s`` level is one window per MLP, centred on the cell's centre
``((r + 0.5) s, (c + 0.5) s)`` in image pixels (pixel ``p`` spans ``[p, p + 1)``), square,
of side ``(1 + padding) * canonical scale`` (25% padding: 40 .. 640 pixels for the 5x5
MLP). The mask a window predicts covers exactly that square.

Windows of all heads are flattened head by head, level-major, each head's cells row by
row: the order of ``SegmentProposals``'s concatenated scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def head_scales(canonical_scales: Sequence[float], mlps_per_level: int) -> np.ndarray:
    """Canonical scale of every head, ``[L * n]`` float32, head ``i * n + j`` =
    ``canonical_scales[i] * 2 ** (j / n)`` (the paper's half octaves for ``n = 2``)."""
    scales = np.asarray(canonical_scales, np.float64)[:, None]
    steps = 2.0 ** (np.arange(mlps_per_level, dtype=np.float64) / mlps_per_level)
    return (scales * steps[None, :]).reshape(-1).astype(np.float32)


def assign_heads(gt_boxes: tf.Tensor, scales: Sequence[float] | np.ndarray) -> tf.Tensor:
    """The head each object belongs to: the nearest canonical scale in log space.

    An object's scale is the larger side of its box (DeepMask's "max of its width and
    height"); objects beyond the smallest or largest canonical scale go to that end's head;
    a tie (an object exactly between two scales in log space) goes to the smaller scale.

    Args:
      gt_boxes: [..., 4] float32 ``(y1, x1, y2, x2)`` pixels.
      scales: ``[H]`` canonical scale of each head (``head_scales``), increasing.

    Returns:
      [...] int32 head index.
    """
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    size = tf.maximum(gt_boxes[..., 2] - gt_boxes[..., 0], gt_boxes[..., 3] - gt_boxes[..., 1])
    log_scale = tf.math.log(tf.maximum(size, 1e-6))[..., None]
    log_heads = tf.math.log(tf.constant(np.asarray(scales, np.float32)))
    distance = tf.abs(log_scale - log_heads)  # [..., H]
    nearest = distance <= tf.reduce_min(distance, axis=-1, keepdims=True)
    return _first_true(nearest)


def _first_true(mask: tf.Tensor) -> tf.Tensor:
    """Index of the first True along the last axis (the axis length when none), int32."""
    count = tf.shape(mask)[-1]
    return tf.reduce_min(tf.where(mask, tf.range(count), count), axis=-1)


def grid_centers(height: tf.Tensor | int, width: tf.Tensor | int, stride: int) -> tf.Tensor:
    """Cell centres ``(cy, cx)`` of a ``height x width`` stride-``stride`` map, row by row
    -> [height * width, 2] float32 pixels."""
    ys = (tf.cast(tf.range(height), tf.float32) + 0.5) * float(stride)
    xs = (tf.cast(tf.range(width), tf.float32) + 0.5) * float(stride)
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")
    return tf.reshape(tf.stack([cy, cx], axis=-1), [-1, 2])


def window_boxes(centers: tf.Tensor, sides: tf.Tensor) -> tf.Tensor:
    """Square windows ``(y1, x1, y2, x2)`` [..., 4] of side ``sides [...]`` centred on
    ``centers [..., 2]`` ``(cy, cx)``."""
    half = tf.cast(sides, tf.float32)[..., None] / 2.0
    centers = tf.cast(centers, tf.float32)
    return tf.concat([centers - half, centers + half], axis=-1)


def segment_targets(
    gt_boxes: tf.Tensor,
    gt_classes: tf.Tensor,
    centers: tf.Tensor,
    strides: tf.Tensor,
    window_heads: tf.Tensor,
    scales: Sequence[float] | np.ndarray,
    candidates: tf.Tensor,
    center_radius: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Labels of all windows (FPN appendix A, DeepMask's positives and negatives).

    A window of head ``h`` at centre ``p`` on a stride-``s`` level is **positive** for an
    object of head ``h`` (``assign_heads``) whose box centre lies within
    ``center_radius * s`` pixels of ``p`` along each axis (the paper's "within ``2^k``
    pixels ... +-1 cell offset"); among several such objects it takes the one whose centre
    is nearest (Euclidean; ties: the lowest ground-truth index). Every other candidate
    window is **negative**, including windows near an object of another scale (DeepMask:
    an object out of the window's scale range is a negative). Windows that are not
    candidates (centres beyond the image, see ``SegmentProposals``) are ignored unless
    positive.

    Args:
      gt_boxes: [B, G, 4] float32 ``(y1, x1, y2, x2)`` pixels.
      gt_classes: [B, G] int32, -1 padding (never matched).
      centers: [N, 2] float32 window centres ``(cy, cx)``.
      strides: [N] float32 stride of each window's level.
      window_heads: [N] int32 head of each window.
      scales: [H] canonical scale of each head (``head_scales``).
      candidates: [B, N] bool, windows that may be negatives.
      center_radius: the centre tolerance in cells (1 in the paper).

    Returns:
      labels: [B, N] int32, 1 positive, 0 negative, -1 ignored.
      matched: [B, N] int32 ground-truth index of positives (0 elsewhere).
    """
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_center_y = (gt_boxes[..., 0] + gt_boxes[..., 2]) / 2.0  # [B, G]
    gt_center_x = (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2.0
    gt_heads = assign_heads(gt_boxes, scales)  # [B, G]
    real = tf.cast(gt_classes, tf.int32) >= 0
    dy = tf.abs(gt_center_y[:, None, :] - centers[None, :, 0, None])  # [B, N, G]
    dx = tf.abs(gt_center_x[:, None, :] - centers[None, :, 1, None])
    reach = (center_radius * tf.cast(strides, tf.float32))[None, :, None]
    near = (
        (dy <= reach)
        & (dx <= reach)
        & tf.equal(gt_heads[:, None, :], tf.cast(window_heads, tf.int32)[None, :, None])
        & real[:, None, :]
    )
    distance = tf.where(near, tf.square(dy) + tf.square(dx), np.inf)
    nearest = near & (distance <= tf.reduce_min(distance, axis=-1, keepdims=True))
    positive = tf.reduce_any(near, axis=-1)
    matched = tf.where(positive, _first_true(nearest), 0)
    labels = tf.where(positive, 1, tf.where(candidates, 0, -1))
    return tf.cast(labels, tf.int32), tf.cast(matched, tf.int32)


def mask_boxes(masks: tf.Tensor, windows: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """Tight boxes of thresholded window-frame masks.

    Cell ``(r, c)`` of an ``m x m`` mask covers ``[y1 + r * h / m, y1 + (r + 1) * h / m)``
    (and likewise in x) of its window; the box spans the cells ``>= threshold``. A mask
    without such a cell gets the empty box at its window's centre.

    Args:
      masks: [B, K, m, m] probabilities in the frames of ``windows``.
      windows: [B, K, 4] float32 ``(y1, x1, y2, x2)``.
      threshold: foreground threshold.

    Returns:
      [B, K, 4] float32 ``(y1, x1, y2, x2)`` pixels.
    """
    size = masks.shape[-1]
    foreground = tf.cast(masks, tf.float32) >= threshold
    rows = tf.reduce_any(foreground, axis=-1)  # [B, K, m]
    cols = tf.reduce_any(foreground, axis=-2)
    cells = tf.range(size, dtype=tf.float32)

    def extent(occupied: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        first = tf.reduce_min(tf.where(occupied, cells, float(size)), axis=-1)
        last = tf.reduce_max(tf.where(occupied, cells + 1.0, 0.0), axis=-1)
        empty = ~tf.reduce_any(occupied, axis=-1)
        half = tf.fill(tf.shape(first), size / 2.0)
        return tf.where(empty, half, first), tf.where(empty, half, last)

    row_first, row_last = extent(rows)
    col_first, col_last = extent(cols)
    y1, x1, y2, x2 = tf.unstack(tf.cast(windows, tf.float32), axis=-1)
    cell_h = (y2 - y1) / size
    cell_w = (x2 - x1) / size
    return tf.stack(
        [y1 + row_first * cell_h, x1 + col_first * cell_w, y1 + row_last * cell_h,
         x1 + col_last * cell_w],
        axis=-1,
    )  # fmt: skip
