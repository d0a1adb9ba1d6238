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

import numpy as np
import tensorflow as tf

# The cubic convolution parameter (Keys 1981) of PyTorch's bicubic ``interpolate``.
_CUBIC_A = -0.75
# Bernstein coefficients of the four bicubic tap weights on a cell: tap a's weight at
# t in [0, 1] is sum_k _BERNSTEIN[a][k] * C(3, k) t^k (1 - t)^(3 - k) (from its monomial
# form: -0.75t + 1.5t^2 - 0.75t^3, 1 - 2.25t^2 + 1.25t^3, 0.75t + 1.5t^2 - 1.25t^3,
# -0.75t^2 + 0.75t^3). The Bernstein basis is non-negative and sums to 1, so on a cell the
# interpolant is at most the largest of its 16 tensor-product Bernstein coefficients.
_BERNSTEIN = (
    (0.0, -0.25, 0.0, 0.0),
    (1.0, 1.0, 0.25, 0.0),
    (0.0, 0.25, 1.0, 1.0),
    (0.0, 0.0, -0.25, 0.0),
)
# Pixels of the resized heatmap evaluated per map and step of ``heatmaps_to_keypoints``'
# search (whole cells, at least MIN_CELLS_PER_STEP of them).
PIXELS_PER_STEP = 6144
MIN_CELLS_PER_STEP = 8
# Float32 rounding of a bound or an interpolated value, relative to the heatmap's largest
# magnitude (a few ulps of 16 products; generous: a larger slack only evaluates more).
_BOUND_SLACK = 3e-5


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


def _cubic_coefficients(t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """PyTorch's bicubic tap weights (``get_cubic_upsample_coefficients``, A = -0.75) of
    the taps ``floor - 1 .. floor + 2`` at fractions ``t`` in [0, 1], same float32 steps."""
    a = _CUBIC_A

    def near(d: tf.Tensor) -> tf.Tensor:  # |d| <= 1
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

    def far(d: tf.Tensor) -> tf.Tensor:  # 1 < |d| < 2
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

    rest = 1.0 - t
    return far(t + 1.0), near(t), near(rest), far(rest + 1.0)


def _source_positions(pixels: tf.Tensor, length: tf.Tensor, heatmap_size: int) -> tf.Tensor:
    """Heatmap coordinate of output ``pixels`` along an axis resized to ``length`` pixels,
    as PyTorch computes it in float32 (``align_corners=False``): ``(m / length) * (d + 0.5)
    - 0.5``, in ``(-0.5, m - 0.5)``. ``length`` broadcasts against ``pixels``."""
    scale = float(heatmap_size) / length
    return scale * (tf.cast(pixels, tf.float32) + 0.5) - 0.5


def _cell_ranges(length: tf.Tensor, heatmap_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """First and end (exclusive) output pixel of each heatmap cell along one axis.

    Cell ``c`` (index ``c + 1``, ``c`` in -1 .. m-1) holds the output pixels whose source
    coordinate has ``floor == c``: their interpolant uses taps ``c - 1 .. c + 2``. The
    coordinate rises with the pixel, so a cell's pixels are consecutive.

    Args:
      length: float32 [D] output pixels of each axis (whole numbers >= 1).

    Returns:
      int32 ``(start, end)`` [D, m + 1].
    """
    longest = tf.cast(tf.maximum(tf.reduce_max(length), 1.0), tf.int32)
    pixels = tf.range(longest)
    positions = _source_positions(pixels[None], length[:, None], heatmap_size)
    positions = tf.where(tf.cast(pixels, tf.float32)[None] < length[:, None], positions, np.inf)
    edges = tf.range(-1, heatmap_size + 1, dtype=tf.float32)  # cell c spans [c, c + 1)
    edges = tf.broadcast_to(edges, [tf.shape(length)[0], heatmap_size + 2])
    counts = tf.searchsorted(positions, edges, side="left", out_type=tf.int32)
    return counts[:, :-1], counts[:, 1:]


def _edge_padded(maps: tf.Tensor) -> tf.Tensor:
    """[..., m, m] -> [..., m + 4, m + 4]: two copies of the border rows and columns on
    each side, so that cell ``c``'s taps ``c - 1 .. c + 2``, clamped to the map as PyTorch
    clamps them, are rows ``c + 1 .. c + 4`` of the result."""
    for axis in (-2, -1):
        first = tf.gather(maps, [0, 0], axis=axis)
        last = tf.gather(maps, [maps.shape[axis] - 1] * 2, axis=axis)
        maps = tf.concat([first, maps, last], axis=axis)
    return maps


def _cell_bounds(padded: tf.Tensor, heatmap_size: int) -> tf.Tensor:
    """[..., m + 1, m + 1]: an upper bound of the bicubic interpolant on each cell.

    On cell ``(i, j)`` the interpolant is ``sum_a p_a(ty) g_a(tx)``: ``g_a`` the cubic
    along x of tap row ``a``, ``p_a`` the tap weights along y. Each ``g_a`` lies between
    the least and the largest of its Bernstein coefficients (``lo_a``, ``hi_a``). The
    weights of the outer taps are <= 0 and those of the inner taps >= 0 on the whole cell,
    so the interpolant is at most ``p_0 lo_0 + p_1 hi_1 + p_2 hi_2 + p_3 lo_3``, a cubic in
    ``ty`` that is at most the largest of its Bernstein coefficients.
    """
    cells = heatmap_size + 1
    columns = [padded[..., :, b : b + cells] for b in range(4)]
    along_x = [
        tf.add_n([_BERNSTEIN[b][k] * columns[b] for b in range(4) if _BERNSTEIN[b][k]])
        for k in range(4)
    ]  # the Bernstein coefficients along x of every tap row and cell: [..., m + 4, m + 1]
    highest = tf.reduce_max(tf.stack(along_x), 0)
    lowest = tf.reduce_min(tf.stack(along_x), 0)
    rows = []
    for a in range(4):
        outer = all(value <= 0.0 for value in _BERNSTEIN[a])
        rows.append((lowest if outer else highest)[..., a : a + cells, :])
    bound = None
    for k in range(4):
        value = tf.add_n([_BERNSTEIN[a][k] * rows[a] for a in range(4) if _BERNSTEIN[a][k]])
        bound = value if bound is None else tf.maximum(bound, value)
    return bound


def _evaluate_cells(
    padded: tf.Tensor,
    cells: tf.Tensor,
    rows: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
    cols: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
    heatmap_size: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The resized heatmap at every output pixel of the chosen cells, with PyTorch's
    arithmetic: along x first (per tap row), then along y, each a left-to-right sum.

    Args:
      padded: [D, K, m + 4, m + 4] (``_edge_padded``).
      cells: int32 [D, K, T] flat cell indices ``(c_y + 1) * (m + 1) + (c_x + 1)``.
      rows, cols: per axis ``(start [D, m + 1], end [D, m + 1], length [D])`` of
        ``_cell_ranges`` and the output pixel count.

    Returns:
      ``(values [D, K, T, Py, Px]`` float32, -inf off the cells' pixels; ``indices`` int32
      of the same shape, row-major in the ``rows x cols`` output).
    """
    side, cells_per_axis = heatmap_size + 4, heatmap_size + 1
    batch = tf.shape(cells)[0]

    def axis_pixels(cell: tf.Tensor, start, end, length) -> tuple[tf.Tensor, ...]:
        first = tf.gather(start, tf.reshape(cell, [batch, -1]), batch_dims=1)
        stop = tf.gather(end, tf.reshape(cell, [batch, -1]), batch_dims=1)
        first, stop = tf.reshape(first, tf.shape(cell)), tf.reshape(stop, tf.shape(cell))
        span = tf.reduce_max(end - start)
        pixels = first[..., None] + tf.range(span)  # [D, K, T, P]
        positions = _source_positions(pixels, length[:, None, None, None], heatmap_size)
        fraction = tf.clip_by_value(positions - tf.floor(positions), 0.0, 1.0)
        return pixels, pixels < stop[..., None], _cubic_coefficients(fraction)

    cell_y, cell_x = cells // cells_per_axis, cells % cells_per_axis
    row_pixels, row_valid, row_weights = axis_pixels(cell_y, *rows)
    col_pixels, col_valid, col_weights = axis_pixels(cell_x, *cols)
    flat = tf.reshape(padded, tf.concat([tf.shape(padded)[:2], [side * side]], 0))
    taps = tf.range(4)
    patch_index = (cell_y[..., None, None] + taps[:, None]) * side + (
        cell_x[..., None, None] + taps[None, :]
    )  # [D, K, T, 4, 4]
    shape = tf.shape(patch_index)
    patch = tf.gather(flat, tf.reshape(patch_index, [shape[0], shape[1], -1]), batch_dims=2)
    patch = tf.reshape(patch, shape)
    value = None
    for a in range(4):
        along_x = None
        for b in range(4):
            term = patch[..., a, b, None] * col_weights[b]  # [D, K, T, Px]
            along_x = term if along_x is None else along_x + term
        term = row_weights[a][..., :, None] * along_x[..., None, :]
        value = term if value is None else value + term
    valid = row_valid[..., :, None] & col_valid[..., None, :]
    columns = tf.cast(cols[2], tf.int32)[:, None, None, None, None]
    indices = row_pixels[..., :, None] * columns + col_pixels[..., None, :]
    return tf.where(valid, value, -np.inf), indices


def heatmaps_to_keypoints(logits: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Keypoint locations and scores from heatmap logits, as torchvision and detectron2
    decode them, exactly and with static shapes.

    The peers (torchvision's and detectron2's ``heatmaps_to_keypoints``) resize each RoI's
    ``m x m`` heatmap bicubically (PyTorch ``interpolate``, ``align_corners=False``, taps
    clamped to the border) to ``ceil(h) x ceil(w)`` pixels (``h, w`` clamped to >= 1) and
    take the first maximum in row-major order; output pixel ``d`` maps to ``x1 + (d + 0.5)
    * (w / ceil(w))``. The resized map can be 1333 px a side for 100 x 17 maps, so it is
    not built. Instead, the pixels are grouped by heatmap cell (the pixels between the
    same four taps per axis, where the interpolant is one bicubic polynomial) and each
    cell gets an upper bound of the interpolant (``_cell_bounds``, from Bernstein
    coefficients). Cells are evaluated in full, in order of decreasing bound, about
    ``PIXELS_PER_STEP`` pixels per map at a time (at least ``MIN_CELLS_PER_STEP`` cells),
    until every cell left has a bound below the best value found by more than float32
    rounding: the maximum, and every pixel that ties with it, lie in the evaluated cells,
    so the result is the peers' pixel, found by a bounded search that needs no window
    around the coarse maximum. A pixel's value is computed with PyTorch's float32 steps
    (along x, then y); only values within float32 rounding of each other can order
    differently than in PyTorch. Memory per step: ``B x N x K x`` about
    ``PIXELS_PER_STEP`` floats. Steps: one or two for a trained head's single peak; maps
    with many near-equal peaks take more, a constant map all ``(m + 1)^2 /
    MIN_CELLS_PER_STEP``.

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
    shape = tf.shape(maps)
    maps = tf.reshape(maps, tf.concat([[-1], shape[2:]], 0))  # [D, K, m, m]
    y1, x1, y2, x2 = tf.unstack(tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]), axis=-1)
    height, width = tf.maximum(y2 - y1, 1.0), tf.maximum(x2 - x1, 1.0)
    rows_out, cols_out = tf.math.ceil(height), tf.math.ceil(width)
    rows = (*_cell_ranges(rows_out, size), rows_out)
    cols = (*_cell_ranges(cols_out, size), cols_out)

    padded = _edge_padded(maps)
    has_pixels = (rows[1] > rows[0])[:, None, :, None] & (cols[1] > cols[0])[:, None, None, :]
    bounds = tf.where(has_pixels, _cell_bounds(padded, size), -np.inf)
    bounds = tf.reshape(bounds, tf.concat([tf.shape(bounds)[:2], [-1]], 0))  # [D, K, cells]
    slack = _BOUND_SLACK * tf.reduce_max(tf.abs(maps), axis=[-2, -1])
    cell_pixels = tf.reduce_max(rows[1] - rows[0]) * tf.reduce_max(cols[1] - cols[0])
    per_step = tf.clip_by_value(PIXELS_PER_STEP // cell_pixels, MIN_CELLS_PER_STEP, (size + 1) ** 2)
    steps = -(-((size + 1) ** 2) // MIN_CELLS_PER_STEP)

    def unfinished(bounds: tf.Tensor, best: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
        return tf.reduce_any(tf.reduce_max(bounds, axis=-1) + slack >= best)

    def search(bounds: tf.Tensor, best: tf.Tensor, best_index: tf.Tensor) -> tuple[tf.Tensor, ...]:
        chosen = tf.math.top_k(bounds, per_step, sorted=False).indices  # [D, K, T]
        values, indices = _evaluate_cells(padded, chosen, rows, cols, size)
        top = tf.reduce_max(values, axis=[-3, -2, -1])
        at_top = values == top[..., None, None, None]
        index = tf.reduce_min(tf.where(at_top, indices, tf.int32.max), axis=[-3, -2, -1])
        better = (top > best) | ((top == best) & (index < best_index))
        grid = tf.meshgrid(*(tf.range(n) for n in tf.unstack(tf.shape(chosen))), indexing="ij")
        done = tf.stack([grid[0], grid[1], chosen], axis=-1)
        bounds = tf.tensor_scatter_nd_update(
            bounds, done, tf.fill(tf.shape(chosen), tf.constant(-np.inf, tf.float32))
        )
        return bounds, tf.where(better, top, best), tf.where(better, index, best_index)

    start = (bounds, tf.fill(tf.shape(slack), -np.inf), tf.zeros(tf.shape(slack), tf.int32))
    _, best, best_index = tf.while_loop(unfinished, search, start, maximum_iterations=steps)
    columns = tf.cast(cols_out, tf.int32)[:, None]
    row = tf.cast(best_index // columns, tf.float32)
    col = tf.cast(best_index % columns, tf.float32)
    y = (row + 0.5) * (height / rows_out)[:, None] + y1[:, None]
    x = (col + 0.5) * (width / cols_out)[:, None] + x1[:, None]
    peak = tf.reduce_max(maps, axis=[-2, -1])
    normalizer = tf.reduce_sum(tf.exp(maps - peak[..., None, None]), axis=[-2, -1])
    score = tf.exp(best - peak) / normalizer
    keypoints = tf.stack([x, y, score], axis=-1)  # [D, K, 3]
    return tf.reshape(keypoints, tf.concat([shape[:3], [3]], 0))
