"""Pure-TensorFlow RoIAlign with the custom op's exact semantics.

Same numbers as ``Kmask>RoiAlign`` (torchvision / ONNX RoiAlign, avg mode; see
``custom_ops/roi_align/roi_align_common.h``): geometry is computed in float32 in the same
order of operations, samples outside ``[-1, H] x [-1, W]`` contribute zero, the adaptive grid
is ``ceil(roi_size / output_size)`` (capped at 256 per axis), non-finite boxes pool zeros.

It works on a *flattened pyramid*: every feature map (one, or one per FPN level) reshaped to
rows of C channels and concatenated, and each box carries the base row, height, width and
scale of the map it reads. So single-level and multilevel RoIAlign are one kernel, with no
loop over boxes or levels. The kernel loops (``tf.while_loop``) over the sample index of the
largest grid among the boxes, gathering the four bilinear neighbours of one sample of every
bin of every box per iteration. As the custom op skips the samples that fall outside the map,
the loop visits only the sample rows and columns of each bin that can fall inside it
(``_sample_window``): box k's sample number s is row first_y[k, bin] + s // n_x[k] and column
first_x[k, bin] + s % n_x[k], so the loop runs max_k(n_y[k] * n_x[k]) times, which is
max_k(grid_h[k] * grid_w[k]) for boxes inside the map and a few iterations for an absurd box
far outside it. Its gradient (a custom gradient, same loop) scatter-adds into the feature
rows. Everything is static-shape friendly and compiles under
``tf.function(jit_compile=True)``. Half-precision features accumulate in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import tensorflow as tf

MAX_GRID = 256  # KMASK_MAX_GRID in roi_align_common.h
MAX_OUTPUT_SIZE = 1024  # KMASK_MAX_POOLED in roi_align_common.h


def check_arguments(output_size: tuple[int, int], sampling_ratio: int) -> None:
    """Refuses what the custom op refuses: an output size outside [1, MAX_OUTPUT_SIZE] and
    a sampling_ratio outside [0, MAX_GRID] (``ValueError`` naming the argument), so that
    the sample counts stay far from int32 overflow and the sample loop is bounded."""
    if not all(1 <= size <= MAX_OUTPUT_SIZE for size in output_size):
        raise ValueError(
            f"output_size must lie in [1, {MAX_OUTPUT_SIZE}] per axis, got {tuple(output_size)}"
        )
    if not 0 <= sampling_ratio <= MAX_GRID:
        raise ValueError(
            f"sampling_ratio must lie in [0, {MAX_GRID}] (0 = adaptive), got {sampling_ratio}"
        )


def _grid(roi_size: tf.Tensor, pooled: int, sampling_ratio: int) -> tf.Tensor:
    if sampling_ratio > 0:
        return tf.fill(tf.shape(roi_size), sampling_ratio)
    grid = tf.math.ceil(roi_size / float(pooled))
    grid = tf.where(grid > 0.0, tf.minimum(grid, float(MAX_GRID)), 0.0)
    return tf.cast(grid, tf.int32)


def _sample_window(
    start: tf.Tensor, bin_size: tf.Tensor, grid: tf.Tensor, pooled: int, size: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The sample indices along one axis that may fall inside ``[-1, size]``.

    Sample i of bin p lies at ``start + p bin + (i + 0.5) bin / grid``, increasing in i for
    a positive bin. The window is widened by two samples and a float32 rounding margin on
    each side (its samples are still tested one by one), and is the whole grid for an empty
    or inverted bin.

    Args:
      start, bin_size: [K] float32 RoI start and bin size in feature pixels.
      grid: [K] int32 samples per bin.
      pooled: bins along the axis.
      size: [K] float32 map size along the axis.

    Returns:
      first: [K, pooled] int32 first sample index of each bin's window; count: [K] int32
      the longest window of the box (0 when the box has no samples).
    """
    grid_f = tf.cast(tf.maximum(grid, 1), tf.float32)[:, None]
    origin = start[:, None] + tf.range(pooled, dtype=tf.float32)[None, :] * bin_size[:, None]
    step = bin_size[:, None] / grid_f
    forward = step > 0.0
    step = tf.where(forward, step, 1.0)
    slack = 2.0 + (tf.abs(origin) + size[:, None] + 1.0) * 1e-6 / step
    last = grid_f - 1.0
    lo = tf.clip_by_value(tf.floor((-1.0 - origin) / step - 0.5 - slack), 0.0, last)
    hi = tf.clip_by_value(tf.math.ceil((size[:, None] - origin) / step - 0.5 + slack), -1.0, last)
    lo = tf.where(forward, lo, 0.0)
    hi = tf.where(forward, hi, last)
    count = tf.reduce_max(tf.maximum(hi - lo + 1.0, 0.0), axis=1)
    count = tf.where(grid > 0, tf.cast(count, tf.int32), 0)
    return tf.cast(lo, tf.int32), count


def _axis_samples(
    coord: tf.Tensor, size: tf.Tensor, in_grid: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Neighbour indices and weights along one axis.

    Args:
      coord: [K, P] float32 sample coordinates in feature pixels.
      size: [K, 1] float32 map size along the axis.
      in_grid: [K, P] bool, false where this sample index is beyond the box's grid.

    Returns:
      lo, hi: [K, P] int32 indices; w_lo, w_hi: [K, P] float32 weights (0 when invalid).
    """
    valid = (coord >= -1.0) & (coord <= size) & (size > 0.0) & in_grid
    value = tf.maximum(coord, 0.0)
    lo = tf.floor(value)
    at_end = lo >= size - 1.0
    lo = tf.where(at_end, size - 1.0, lo)
    hi = tf.where(at_end, lo, lo + 1.0)
    frac = tf.where(at_end, 0.0, value - lo)
    zero = tf.zeros_like(coord)
    lo = tf.cast(tf.where(valid, lo, zero), tf.int32)
    hi = tf.cast(tf.where(valid, hi, zero), tf.int32)
    return lo, hi, tf.where(valid, 1.0 - frac, zero), tf.where(valid, frac, zero)


def pool_flat(
    flat_features: tf.Tensor,
    boxes: tf.Tensor,
    base: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    scale: tf.Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> tf.Tensor:
    """RoIAlign over a flattened pyramid.

    Args:
      flat_features: [R, C] feature rows; row ``base[k] + y * width[k] + x`` is pixel (y, x)
        of the map box k reads.
      boxes: [K, 4] float32 (y1, x1, y2, x2) in input pixels.
      base, height, width: [K] int32 first row and size of each box's map.
      scale: [K] float32 spatial scale of each box's map (1 / stride).
      output_size: (out_h, out_w).

    Returns:
      [K, out_h, out_w, C] in the dtype of ``flat_features``.
    """
    check_arguments(output_size, sampling_ratio)
    out_h, out_w = output_size
    boxes = tf.cast(boxes, tf.float32)
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    boxes = tf.where(finite[:, None], boxes, 0.0)
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    start_h = y1 * scale - offset
    start_w = x1 * scale - offset
    roi_h = (y2 * scale - offset) - start_h
    roi_w = (x2 * scale - offset) - start_w
    if not aligned:
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    bin_h, bin_w = roi_h / float(out_h), roi_w / float(out_w)
    grid_h = tf.where(finite, _grid(roi_h, out_h, sampling_ratio), 0)
    grid_w = tf.where(finite, _grid(roi_w, out_w, sampling_ratio), 0)
    first_y, count_y = _sample_window(start_h, bin_h, grid_h, out_h, tf.cast(height, tf.float32))
    first_x, count_x = _sample_window(start_w, bin_w, grid_w, out_w, tf.cast(width, tf.float32))
    acc_dtype = tf.float64 if flat_features.dtype == tf.float64 else tf.float32
    count = tf.cast(tf.maximum(grid_h * grid_w, 1), acc_dtype)
    inv_count = tf.where(finite, 1.0 / count, tf.zeros_like(count))

    geometry = _Geometry(
        start_h, start_w, bin_h, bin_w, grid_h, grid_w, first_y, first_x, count_y, count_x
    )
    pool = _pool_function((out_h, out_w), acc_dtype)
    return pool(flat_features, inv_count, base, height, width, *geometry)


class _Geometry(NamedTuple):
    """Where each box samples: float32 [K] start and bin size per axis (in map pixels),
    int32 [K] samples per bin per axis (``grid_*``), and ``_sample_window``'s int32
    [K, out] first in-map sample of each bin and [K] samples per bin that may be in the map."""

    start_h: tf.Tensor
    start_w: tf.Tensor
    bin_h: tf.Tensor
    bin_w: tf.Tensor
    grid_h: tf.Tensor
    grid_w: tf.Tensor
    first_y: tf.Tensor
    first_x: tf.Tensor
    count_y: tf.Tensor
    count_x: tf.Tensor


def _corners(
    sample: tf.Tensor,
    geometry: _Geometry,
    base: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    output_size: tuple[int, int],
    dtype: tf.DType,
) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """(row index [K,oh,ow], weight [K,oh,ow] in `dtype`) of the 4 neighbours of sample
    number `sample` of every bin of every box: (jy, jx) = divmod(sample, count_x[k]) per box,
    the sample (first_y[k, bin] + jy, first_x[k, bin] + jx) of each bin (``_sample_window``),
    so the loop runs max(count_y * count_x) times rather than max(count_y) * max(count_x).
    ``base``, ``height``, ``width``: [K] int32 first row and size of each box's map."""
    out_h, out_w = output_size
    start_h, start_w, bin_h, bin_w, grid_h, grid_w, first_y, first_x, count_y, count_x = geometry
    columns_per_row = tf.maximum(count_x, 1)
    jy, jx = sample // columns_per_row, sample % columns_per_row
    iy = first_y + jy[:, None]
    ix = first_x + jx[:, None]
    grid_h_f = tf.cast(tf.maximum(grid_h, 1), tf.float32)[:, None]
    grid_w_f = tf.cast(tf.maximum(grid_w, 1), tf.float32)[:, None]
    bins_h = tf.range(out_h, dtype=tf.float32)[None, :]
    bins_w = tf.range(out_w, dtype=tf.float32)[None, :]
    y = (
        start_h[:, None]
        + bins_h * bin_h[:, None]
        + (tf.cast(iy, tf.float32) + 0.5) * bin_h[:, None] / grid_h_f
    )
    x = (
        start_w[:, None]
        + bins_w * bin_w[:, None]
        + (tf.cast(ix, tf.float32) + 0.5) * bin_w[:, None] / grid_w_f
    )
    in_grid_y = (iy < grid_h[:, None]) & (jy < count_y)[:, None]
    in_grid_x = ix < grid_w[:, None]
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y, tf.cast(height, tf.float32)[:, None], in_grid_y)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x, tf.cast(width, tf.float32)[:, None], in_grid_x)
    rows = [base[:, None] + y_lo * width[:, None], base[:, None] + y_hi * width[:, None]]
    columns = [x_lo, x_hi]
    weights_y = [tf.cast(wy_lo, dtype), tf.cast(wy_hi, dtype)]
    weights_x = [tf.cast(wx_lo, dtype), tf.cast(wx_hi, dtype)]
    return [
        (
            rows[i][:, :, None] + columns[j][:, None, :],
            weights_y[i][:, :, None] * weights_x[j][:, None, :],
        )
        for i in range(2)
        for j in range(2)
    ]


def _num_samples(count_y: tf.Tensor, count_x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_max(tf.concat([count_y * count_x, [0]], 0))


def _pool_function(output_size: tuple[int, int], acc_dtype: tf.DType):
    """The sample loop as a function of tensors only (as tf.custom_gradient requires in
    graph mode): flat [R, C] and the per-box geometry -> [K, oh, ow, C]. Its gradient is a
    scatter-add into ``flat``; the geometry tensors, derived from boxes, get none."""

    @tf.custom_gradient
    def pool(
        flat: tf.Tensor,
        inv_count: tf.Tensor,
        base: tf.Tensor,
        height: tf.Tensor,
        width: tf.Tensor,
        *geometry_tensors: tf.Tensor,
    ):
        geometry = _Geometry(*geometry_tensors)
        maps = (base, height, width)
        num_samples = _num_samples(geometry.count_y, geometry.count_x)
        scale = inv_count[:, None, None, None]
        out_shape = tf.stack([tf.shape(geometry.start_h)[0], *output_size, tf.shape(flat)[-1]])

        def forward_step(sample: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            for index, weight in _corners(sample, geometry, *maps, output_size, acc_dtype):
                acc += weight[..., None] * tf.cast(tf.gather(flat, index), acc_dtype)
            return sample + 1, acc

        _, acc = tf.while_loop(
            lambda s, _: s < num_samples,
            forward_step,
            (tf.constant(0), tf.zeros(out_shape, acc_dtype)),
        )

        def grad(upstream: tf.Tensor) -> tuple:
            upstream = tf.cast(upstream, acc_dtype) * scale

            def backward_step(
                sample: tf.Tensor, grad_flat: tf.Tensor
            ) -> tuple[tf.Tensor, tf.Tensor]:
                for index, weight in _corners(sample, geometry, *maps, output_size, acc_dtype):
                    updates = weight[..., None] * upstream
                    grad_flat = tf.tensor_scatter_nd_add(grad_flat, index[..., None], updates)
                return sample + 1, grad_flat

            _, grad_flat = tf.while_loop(
                lambda s, _: s < num_samples,
                backward_step,
                (tf.constant(0), tf.zeros(tf.shape(flat), acc_dtype)),
            )
            return (tf.cast(grad_flat, flat.dtype),) + (None,) * (4 + len(geometry))

        return tf.cast(acc * scale, flat.dtype), grad

    return pool


def roi_align_tf(
    features: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> tf.Tensor:
    """features [B,H,W,C]; boxes [K,4] (y1,x1,y2,x2); box_indices [K] -> [K,oh,ow,C]."""
    shape = tf.shape(features)
    height, width = shape[1], shape[2]
    num_boxes = tf.shape(boxes)[0]
    flat = tf.reshape(features, tf.stack([-1, shape[3]]))
    base = tf.cast(box_indices, tf.int32) * height * width
    return pool_flat(
        flat,
        boxes,
        base,
        tf.fill([num_boxes], height),
        tf.fill([num_boxes], width),
        tf.fill([num_boxes], float(spatial_scale)),
        output_size,
        sampling_ratio,
        aligned,
    )


def _concat_rows(parts: list[tf.Tensor]) -> tf.Tensor:
    """``tf.concat(parts, 0)`` whose gradient gives each part a buffer of its own.

    ``tf.concat``'s gradient slices the upstream gradient, and on the CPU a slice along the
    first axis is a view of the one buffer. An FPN level that other layers read as well
    (the RPN head, the box and the mask pooler) sums its gradients with ``AddN``, which
    starts the sum from the first input buffer it may overwrite: a view may not be
    overwritten while a sibling slice is alive, which depends on thread timing, so the
    order of the float sum, hence its last bits, changed from run to run (and a resumed
    training run differed from an uninterrupted one). The gradients here are gathered
    copies, as the custom op's gradient is a tensor of its own for each level.
    """

    @tf.custom_gradient
    def concat(*parts: tf.Tensor):
        sizes = [tf.shape(part)[0] for part in parts]

        def grad(upstream: tf.Tensor) -> list[tf.Tensor]:
            grads, start = [], tf.constant(0)
            for size in sizes:
                grads.append(tf.gather(upstream, tf.range(start, start + size)))
                start += size
            return grads

        return tf.concat(parts, 0), grad

    return concat(*parts)


def multi_level_roi_align_tf(
    features: Mapping[int, tf.Tensor],
    boxes: tf.Tensor,
    levels: tf.Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> tf.Tensor:
    """RoIAlign of every box on its own level, all levels in one kernel.

    Args:
      features: {level: [B, H_l, W_l, C]} for consecutive levels; level l has stride 2**l.
      boxes: [B, N, 4] float32 (y1, x1, y2, x2) in input pixels.
      levels: [B, N] int32 level of each box (one of the keys of ``features``).
      output_size: (out_h, out_w).

    Returns:
      [B, N, out_h, out_w, C], in input order.
    """
    keys = sorted(features)
    shapes = [tf.shape(features[key]) for key in keys]
    flat = _concat_rows(
        [tf.reshape(features[key], tf.stack([-1, shape[3]])) for key, shape in zip(keys, shapes)]
    )
    heights = tf.stack([shape[1] for shape in shapes])
    widths = tf.stack([shape[2] for shape in shapes])
    sizes = tf.stack([shape[0] * shape[1] * shape[2] for shape in shapes])
    offsets = tf.cumsum(sizes, exclusive=True)
    scales = tf.constant([math.ldexp(1.0, -key) for key in keys], tf.float32)

    batch, num = tf.shape(boxes)[0], tf.shape(boxes)[1]
    index = tf.reshape(tf.cast(levels, tf.int32) - keys[0], [-1])
    image = tf.repeat(tf.range(batch), num)
    height, width = tf.gather(heights, index), tf.gather(widths, index)
    base = tf.gather(offsets, index) + image * height * width
    pooled = pool_flat(
        flat,
        tf.reshape(boxes, [-1, 4]),
        base,
        height,
        width,
        tf.gather(scales, index),
        output_size,
        sampling_ratio,
        aligned,
    )
    return tf.reshape(pooled, tf.concat([[batch, num], tf.shape(pooled)[1:]], 0))
