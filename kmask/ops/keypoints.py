"""Keypoints: heatmap training targets and heatmap decoding (Mask R-CNN section 5).

Coordinates are continuous image pixels (pixel ``p`` spans ``[p, p + 1)``; COCO's integer
pixel index ``i`` is ``i + 0.5``). A RoI ``(y1, x1, y2, x2)`` is divided into an ``m x m``
grid (``m = 56``); cell ``(i, j)`` spans ``y1 + [i, i + 1) * h / m`` and
``x1 + [j, j + 1) * w / m``. This is detectron2's ``keypoints_to_heatmap`` and
torchvision's ``keypoints_to_heatmap_labels`` (Heckbert 1990: ``c = d + 0.5``).

Keypoints are ``(x, y, v)`` (ground truth) and ``(x, y, score)`` (detections), COCO's order,
while boxes stay ``(y1, x1, y2, x2)`` as everywhere in kmask.
"""

from __future__ import annotations

import tensorflow as tf

# Heatmap cells that the candidate pixels of ``heatmaps_to_keypoints`` span at least.
WINDOW_CELLS = 3.0
# The cubic convolution parameter (Keys 1981) of PyTorch's bicubic ``interpolate``.
_CUBIC_A = -0.75


def keypoint_targets(
    gt_keypoints: tf.Tensor, rois: tf.Tensor, matched_index: tf.Tensor, heatmap_size: int = 56
) -> tuple[tf.Tensor, tf.Tensor]:
    """One-hot heatmap targets of each RoI's matched ground-truth keypoints.

    A keypoint at ``(x, y)`` falls in cell ``(floor((y - y1) m / h), floor((x - x1) m / w))``
    of the RoI (a keypoint exactly on the bottom/right edge goes to the last cell). It is a
    target when it is labelled (``v > 0``: COCO's visible 2 and occluded-but-labelled 1)
    and the cell is inside the grid; keypoints outside the RoI give no target.

    Args:
      gt_keypoints: [B, G, K, 3] float32 ``(x, y, v)`` in pixels (``kmask.data``; COCO's
        order, and the order of ``heatmaps_to_keypoints``'s ``(x, y, score)``).
      rois: [B, Q, 4] float32 ``(y1, x1, y2, x2)`` pixels.
      matched_index: [B, Q] int32 ground-truth index of each RoI.
      heatmap_size: m.

    Returns:
      ``(indices, valid)``: int32 [B, Q, K] flat cell index ``i * m + j`` (0 where not
      valid) and bool [B, Q, K].
    """
    keypoints = tf.gather(tf.cast(gt_keypoints, tf.float32), matched_index, batch_dims=1)
    x, y, v = tf.unstack(keypoints, axis=-1)  # [B, Q, K]
    y1, x1, y2, x2 = (c[..., None] for c in tf.unstack(tf.cast(rois, tf.float32), axis=-1))
    size = float(heatmap_size)

    def cell(value: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
        scaled = tf.math.divide_no_nan((value - low) * size, high - low)
        index = tf.where(value == high, size - 1.0, tf.floor(scaled))
        # Far-off values would overflow the int32 cast; they are invalid anyway.
        return tf.cast(tf.clip_by_value(index, -1.0, size), tf.int32)

    row, col = cell(y, y1, y2), cell(x, x1, x2)
    inside = (row >= 0) & (row < heatmap_size) & (col >= 0) & (col < heatmap_size)
    valid = inside & (v > 0) & (y2 > y1) & (x2 > x1)
    indices = tf.where(valid, row * heatmap_size + col, 0)
    return tf.stop_gradient(indices), valid


def _cubic_weights(positions: tf.Tensor, size: int) -> tf.Tensor:
    """Weights [..., T, size] of PyTorch's bicubic interpolation (``align_corners=False``,
    A = -0.75, indices clamped to the border) at source ``positions`` [..., T]."""
    base = tf.floor(positions)
    t = positions - base
    a = _CUBIC_A

    def near(d: tf.Tensor) -> tf.Tensor:  # |d| <= 1
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

    def far(d: tf.Tensor) -> tf.Tensor:  # 1 < |d| < 2
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

    coefficients = (far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t))
    weights = 0.0
    for tap, coefficient in enumerate(coefficients):
        index = tf.clip_by_value(tf.cast(base, tf.int32) + (tap - 1), 0, size - 1)
        weights += tf.one_hot(index, size) * coefficient[..., None]
    return weights


def _axis_candidates(
    coarse: tf.Tensor, length: tf.Tensor, heatmap_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """``m`` output pixels along one axis of a heatmap resampled to ``length`` pixels:
    all of them when ``length <= m``, else ``m`` pixels around heatmap cell ``coarse``
    (consecutive while they span ``WINDOW_CELLS`` cells, i.e. ``length <= m^2 /
    WINDOW_CELLS``, 1045 px for m = 56; evenly strided beyond).

    Args:
      coarse: int32 [B, N, K] heatmap cell.
      length: float32 [B, N, 1] output pixels.

    Returns:
      float32 [B, N, K, m] pixel indices in ``[0, length)`` and their positions on the
      heatmap (PyTorch's ``(d + 0.5) m / length - 0.5``).
    """
    scale = heatmap_size / length
    centre = (tf.cast(coarse, tf.float32) + 0.5) / scale - 0.5
    stride = tf.maximum(tf.math.ceil(WINDOW_CELLS / scale / heatmap_size), 1.0)
    last = length - 1.0
    start = tf.round(centre) - (heatmap_size // 2) * stride
    start = tf.clip_by_value(start, 0.0, tf.maximum(last - (heatmap_size - 1) * stride, 0.0))
    steps = tf.range(heatmap_size, dtype=tf.float32)
    pixels = tf.minimum(start[..., None] + steps * stride[..., None], last[..., None])
    return pixels, (pixels + 0.5) * scale[..., None] - 0.5


def _flat_argmax(maps: tf.Tensor) -> tf.Tensor:
    """int32 [...]: row-major index of the maximum of each [..., H, W] map (first on ties)."""
    shape = tf.shape(maps)
    return tf.argmax(tf.reshape(maps, tf.concat([shape[:-2], [-1]], 0)), -1, tf.int32)


def heatmaps_to_keypoints(logits: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Keypoint locations and scores from heatmap logits, with static shapes.

    The peers (detectron2 and torchvision ``heatmaps_to_keypoints``) resize each RoI's
    ``m x m`` heatmap bicubically (PyTorch, ``align_corners=False``) to ``ceil(h) x
    ceil(w)`` pixels and take the maximum: sub-pixel placement to one image pixel. The
    resized size varies per RoI, so here the same bicubic interpolant is evaluated at
    ``m x m`` candidate pixels (``_axis_candidates``): along an axis of at most ``m``
    pixels all of them, along a longer axis ``m`` pixels around the maximum (found on the
    heatmap resampled along the other axis when that one is short). The result is the
    peers' keypoint whenever their maximum lies in that window (always for RoIs up to
    ``m`` pixels a side), within ``stride / 2`` pixels for sides over 1045 px.
    Output pixel ``d`` maps to ``x1 + (d + 0.5) w / ceil(w)`` (``w`` clamped to >= 1).

    The score is detectron2's: the softmax probability at the maximum, normalized over the
    ``m x m`` heatmap, ``exp(l_max) / sum(exp(heatmap))`` (comparable across RoI sizes).

    Args:
      logits: [B, N, m, m, K] heatmap logits.
      boxes: [B, N, 4] float32 ``(y1, x1, y2, x2)`` pixels, the RoIs of the heatmaps.

    Returns:
      [B, N, K, 3] float32 ``(x, y, score)``, coordinates in the boxes' pixels.
    """
    maps = tf.transpose(tf.cast(logits, tf.float32), [0, 1, 4, 2, 3])  # [B, N, K, m, m]
    size = maps.shape[-1]
    y1, x1, y2, x2 = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    height = tf.maximum(y2 - y1, 1.0)[..., None]  # [B, N, 1]
    width = tf.maximum(x2 - x1, 1.0)[..., None]
    rows_out, cols_out = tf.math.ceil(height), tf.math.ceil(width)
    # Short axes are resampled in full first: the long axis's window follows their maximum.
    no_cell = tf.zeros_like(maps[..., 0, 0], tf.int32)
    _, all_rows = _axis_candidates(no_cell, rows_out, size)
    _, all_cols = _axis_candidates(no_cell, cols_out, size)
    short_rows = (rows_out <= size)[..., None, None]
    short_cols = (cols_out <= size)[..., None, None]
    by_rows = tf.where(short_rows, tf.matmul(_cubic_weights(all_rows, size), maps), maps)
    by_cols = tf.where(
        short_cols, tf.matmul(maps, _cubic_weights(all_cols, size), transpose_b=True), maps
    )
    rows, row_positions = _axis_candidates(_flat_argmax(by_cols) // size, rows_out, size)
    cols, col_positions = _axis_candidates(_flat_argmax(by_rows) % size, cols_out, size)
    local = tf.matmul(
        tf.matmul(_cubic_weights(row_positions, size), maps),
        _cubic_weights(col_positions, size),
        transpose_b=True,
    )  # [B, N, K, m, m]: the resized heatmap at the candidate pixels
    best = _flat_argmax(local)
    row = tf.gather(rows, best // size, batch_dims=3)
    col = tf.gather(cols, best % size, batch_dims=3)
    y = y1[..., None] + (row + 0.5) * height / rows_out
    x = x1[..., None] + (col + 0.5) * width / cols_out
    peak = tf.reduce_max(maps, axis=[-2, -1])
    normalizer = tf.reduce_sum(tf.exp(maps - peak[..., None, None]), axis=[-2, -1])
    score = tf.exp(tf.reduce_max(local, axis=[-2, -1]) - peak) / normalizer
    return tf.stack([x, y, score], axis=-1)
