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
bin of every box per iteration (box k's sample number s is (s // grid_w[k], s % grid_w[k]),
so the loop runs max_k(grid_h[k] * grid_w[k]) times); its gradient (a custom gradient, same
loop) scatter-adds into the feature rows. Everything is static-shape friendly and compiles under
``tf.function(jit_compile=True)``. Half-precision features accumulate in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import tensorflow as tf

MAX_GRID = 256  # KMASK_MAX_GRID in roi_align_common.h


def _grid(roi_size: tf.Tensor, pooled: int, sampling_ratio: int) -> tf.Tensor:
    if sampling_ratio > 0:
        return tf.fill(tf.shape(roi_size), sampling_ratio)
    grid = tf.math.ceil(roi_size / float(pooled))
    grid = tf.where(grid > 0.0, tf.minimum(grid, float(MAX_GRID)), 0.0)
    return tf.cast(grid, tf.int32)


def _axis_samples(
    coord: tf.Tensor, size: tf.Tensor, in_grid: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Neighbour indices and weights along one axis.

    Args:
      coord: [K, P] float32 sample coordinates in feature pixels.
      size: [K, 1] float32 map size along the axis.
      in_grid: [K, 1] bool, false where this sample index is beyond the box's grid.

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
    acc_dtype = tf.float64 if flat_features.dtype == tf.float64 else tf.float32
    count = tf.cast(tf.maximum(grid_h * grid_w, 1), acc_dtype)
    inv_count = tf.where(finite, 1.0 / count, tf.zeros_like(count))

    pool = _pool_function((out_h, out_w), acc_dtype)
    return pool(
        flat_features,
        start_h,
        start_w,
        bin_h,
        bin_w,
        grid_h,
        grid_w,
        inv_count,
        base,
        height,
        width,
    )


def _corners(
    sample: tf.Tensor,
    start_h: tf.Tensor,
    start_w: tf.Tensor,
    bin_h: tf.Tensor,
    bin_w: tf.Tensor,
    grid_h: tf.Tensor,
    grid_w: tf.Tensor,
    base: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    output_size: tuple[int, int],
    dtype: tf.DType,
) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """(row index [K,oh,ow], weight [K,oh,ow] in `dtype`) of the 4 neighbours of sample
    number `sample` of every bin of every box: (iy, ix) = divmod(sample, grid_w[k]) per box,
    so the loop runs max(grid_h * grid_w) times rather than max(grid_h) * max(grid_w)."""
    out_h, out_w = output_size
    columns_per_row = tf.maximum(grid_w, 1)
    iy, ix = sample // columns_per_row, sample % columns_per_row
    grid_h_f = tf.cast(tf.maximum(grid_h, 1), tf.float32)[:, None]
    grid_w_f = tf.cast(columns_per_row, tf.float32)[:, None]
    bins_h = tf.range(out_h, dtype=tf.float32)[None, :]
    bins_w = tf.range(out_w, dtype=tf.float32)[None, :]
    y = (
        start_h[:, None]
        + bins_h * bin_h[:, None]
        + (tf.cast(iy, tf.float32)[:, None] + 0.5) * bin_h[:, None] / grid_h_f
    )
    x = (
        start_w[:, None]
        + bins_w * bin_w[:, None]
        + (tf.cast(ix, tf.float32)[:, None] + 0.5) * bin_w[:, None] / grid_w_f
    )
    in_grid = (iy < grid_h)[:, None]
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y, tf.cast(height, tf.float32)[:, None], in_grid)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x, tf.cast(width, tf.float32)[:, None], in_grid)
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


def _num_samples(grid_h: tf.Tensor, grid_w: tf.Tensor) -> tf.Tensor:
    return tf.reduce_max(tf.concat([grid_h * grid_w, [0]], 0))


def _pool_function(output_size: tuple[int, int], acc_dtype: tf.DType):
    """The sample loop as a function of tensors only (as tf.custom_gradient requires in
    graph mode): flat [R, C] and the per-box geometry -> [K, oh, ow, C]. Its gradient is a
    scatter-add into ``flat``; the geometry tensors, derived from boxes, get none."""

    @tf.custom_gradient
    def pool(
        flat: tf.Tensor,
        start_h: tf.Tensor,
        start_w: tf.Tensor,
        bin_h: tf.Tensor,
        bin_w: tf.Tensor,
        grid_h: tf.Tensor,
        grid_w: tf.Tensor,
        inv_count: tf.Tensor,
        base: tf.Tensor,
        height: tf.Tensor,
        width: tf.Tensor,
    ):
        geometry = (start_h, start_w, bin_h, bin_w, grid_h, grid_w, base, height, width)
        num_samples = _num_samples(grid_h, grid_w)
        scale = inv_count[:, None, None, None]
        out_shape = tf.stack([tf.shape(start_h)[0], *output_size, tf.shape(flat)[-1]])

        def forward_step(sample: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            for index, weight in _corners(sample, *geometry, output_size, acc_dtype):
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
                for index, weight in _corners(sample, *geometry, output_size, acc_dtype):
                    updates = weight[..., None] * upstream
                    grad_flat = tf.tensor_scatter_nd_add(grad_flat, index[..., None], updates)
                return sample + 1, grad_flat

            _, grad_flat = tf.while_loop(
                lambda s, _: s < num_samples,
                backward_step,
                (tf.constant(0), tf.zeros(tf.shape(flat), acc_dtype)),
            )
            return (tf.cast(grad_flat, flat.dtype),) + (None,) * 10

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


def multilevel_roi_align_tf(
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
    flat = tf.concat(
        [tf.reshape(features[key], tf.stack([-1, shape[3]])) for key, shape in zip(keys, shapes)],
        axis=0,
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
