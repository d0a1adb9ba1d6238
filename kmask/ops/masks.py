"""Instance masks: training targets from box-frame ground truth, and pasting into images.

Ground-truth representation (memory bound): each instance's mask is stored cropped to its
OWN ground-truth box and resampled to ``M x M`` (``M = 112`` by default), as uint8 {0, 1}:
cell ``(i, j)`` is the mask at ``y = y1 + (i + 0.5) * (y2 - y1) / M``,
``x = x1 + (j + 0.5) * (x2 - x1) / M``. A batch of 2 images with 100 instances each costs
``2 * 100 * 112 * 112`` bytes = 2.5 MB, against ``2 * 100 * 1024 * 1024`` bytes = 200 MB for
full-image masks at 1024x1024. Outside its box a ground-truth mask is zero.

Predicted masks are ``m x m`` probabilities in their detection box's frame with the same
cell-centre convention.
"""

from __future__ import annotations

import math

import tensorflow as tf

from kmask.ops.roi_align import roi_align


def mask_targets(
    gt_masks: tf.Tensor,
    gt_boxes: tf.Tensor,
    rois: tf.Tensor,
    matched_index: tf.Tensor,
    output_size: int = 28,
    sampling_ratio: int | None = None,
    implementation: str = "auto",
) -> tf.Tensor:
    """Binary mask targets: each RoI's matched ground-truth mask RoIAligned to the RoI.

    The RoI is mapped into its ground truth's box frame (``u = (y - gy1) * M / (gy2 - gy1)``)
    and the box-frame mask, padded with one zero cell on every side so that bilinear samples
    just outside the box blend towards zero, is RoIAligned (``aligned=True``) to
    ``output_size`` and thresholded at 0.5.

    The sampling grid is fixed, ``sampling_ratio`` per bin and axis (default
    ``ceil(M / output_size)``: what adaptive sampling takes for a RoI equal to its ground
    truth box), so the cost is ``B * R * output_size^2 * sampling_ratio^2`` samples whatever
    the geometry; adaptive sampling would explode for a large background RoI matched to a
    tiny ground truth.

    Args:
      gt_masks: [B, G, M, M] uint8 / bool / float {0, 1} box-frame masks.
      gt_boxes: [B, G, 4] float32 ``(y1, x1, y2, x2)`` pixels, the masks' frames.
      rois: [B, R, 4] float32 RoIs in pixels.
      matched_index: [B, R] int32 ground-truth index of each RoI.
      output_size: side of the target grid (28 in the paper).
      sampling_ratio: samples per bin and axis; None = ``ceil(M / output_size)``.
      implementation: RoIAlign kernel, see ``kmask.ops.roi_align``.

    Returns:
      [B, R, output_size, output_size] float32 in {0, 1} (no gradient).
    """
    if sampling_ratio is None:
        static_size = gt_masks.shape[-1]
        if static_size is None:
            raise ValueError("gt_masks needs a static mask size, or pass sampling_ratio")
        sampling_ratio = max(1, math.ceil(static_size / output_size))
    num_gt = tf.shape(gt_masks)[1]
    size = tf.shape(gt_masks)[2]
    batch = tf.shape(rois)[0]
    num_rois = tf.shape(rois)[1]
    masks = tf.cast(gt_masks, tf.float32)
    masks = tf.pad(tf.reshape(masks, [-1, size, size])[..., None], [[0, 0], [1, 1], [1, 1], [0, 0]])
    frames = tf.gather(tf.cast(gt_boxes, tf.float32), matched_index, batch_dims=1)  # [B, R, 4]
    fy1, fx1, fy2, fx2 = tf.unstack(frames, axis=-1)
    ry1, rx1, ry2, rx2 = tf.unstack(tf.cast(rois, tf.float32), axis=-1)
    scale_y = tf.cast(size, tf.float32) / tf.maximum(fy2 - fy1, 1e-6)
    scale_x = tf.cast(size, tf.float32) / tf.maximum(fx2 - fx1, 1e-6)
    mapped = tf.stack(
        [
            (ry1 - fy1) * scale_y + 1.0,
            (rx1 - fx1) * scale_x + 1.0,
            (ry2 - fy1) * scale_y + 1.0,
            (rx2 - fx1) * scale_x + 1.0,
        ],
        axis=-1,
    )
    box_indices = tf.range(batch)[:, None] * num_gt + tf.cast(matched_index, tf.int32)
    crops = roi_align(
        masks,
        tf.reshape(mapped, [-1, 4]),
        tf.reshape(box_indices, [-1]),
        output_size=(output_size, output_size),
        spatial_scale=1.0,
        sampling_ratio=sampling_ratio,
        aligned=True,
        implementation=implementation,
    )
    crops = tf.reshape(crops, [batch, num_rois, output_size, output_size])
    return tf.stop_gradient(tf.cast(crops >= 0.5, tf.float32))


def select_class(logits: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """Each RoI's map of its own class: ``logits [B, R, m, m, K]``, ``classes [B, R]`` int32
    0-based (negative values pick class 0) -> ``[B, R, m, m]``."""
    maps = tf.transpose(logits, [0, 1, 4, 2, 3])  # [B, R, K, m, m]
    return tf.gather(maps, tf.maximum(classes, 0), batch_dims=2)


def _interpolation_weights(
    start: tf.Tensor, end: tf.Tensor, mask_size: int, length: tf.Tensor | int
) -> tf.Tensor:
    """Bilinear weights [..., length, mask_size] from image pixels to mask cells, zero outside.

    Pixel ``p`` (centre ``p + 0.5``) sits at mask index coordinate
    ``t = (p + 0.5 - start) * mask_size / (end - start) - 0.5``; cell ``k`` gets weight
    ``max(0, 1 - |t - k|)`` (bilinear interpolation with zero padding beyond the mask).
    """
    centers = tf.cast(tf.range(length), tf.float32) + 0.5
    scale = float(mask_size) / tf.maximum(end - start, 1e-6)
    t = (centers - start[..., None]) * scale[..., None] - 0.5  # [..., length]
    cells = tf.range(mask_size, dtype=tf.float32)
    return tf.maximum(1.0 - tf.abs(t[..., :, None] - cells), 0.0)


def _torchvision_weights(
    start: tf.Tensor, end: tf.Tensor, mask_size: int, length: tf.Tensor | int
) -> tf.Tensor:
    """torchvision's pasting as weights [..., length, mask_size] (``paste_masks_in_image``).

    The mask is padded by one zero cell on each side and its box scaled by ``(m + 2) / m``
    about its centre; the scaled box is truncated to whole pixels ``b0 .. b1`` (inclusive),
    and the padded mask resized to ``b1 - b0 + 1`` pixels by half-pixel bilinear
    interpolation with edge clamping (``F.interpolate``, ``align_corners=False``).
    """
    padded = mask_size + 2
    center = (start + end) * 0.5
    half = (end - start) * 0.5 * (padded / mask_size)  # torchvision's float32 rounding
    first = tf.cast(tf.cast(center - half, tf.int64), tf.float32)  # truncation, as int64()
    size = tf.maximum(tf.cast(tf.cast(center + half, tf.int64), tf.float32) - first + 1.0, 1.0)
    offset = tf.cast(tf.range(length), tf.float32) - first[..., None]  # [..., length]
    inside = (offset >= 0.0) & (offset < size[..., None])
    source = tf.maximum((offset + 0.5) * padded / size[..., None] - 0.5, 0.0)
    low = tf.floor(source)
    high = tf.minimum(low + 1.0, padded - 1.0)
    fraction = source - low
    cells = tf.range(1, mask_size + 1, dtype=tf.float32)  # padded index of each mask cell
    weights = (1.0 - fraction)[..., None] * tf.cast(
        tf.equal(low[..., None], cells), tf.float32
    ) + fraction[..., None] * tf.cast(tf.equal(high[..., None], cells), tf.float32)
    return tf.where(inside[..., None], weights, 0.0)


PASTE_METHODS = ("exact", "torchvision")


def paste_masks(
    masks: tf.Tensor,
    boxes: tf.Tensor,
    image_shape: tuple[int, int] | tf.Tensor,
    threshold: float = 0.5,
    method: str = "exact",
) -> tf.Tensor:
    """Pastes box-frame mask probabilities into full images and binarizes them.

    ``method="exact"`` (detectron2's geometry): each ``m x m`` mask is resampled bilinearly
    (cell ``k`` is centred at ``y1 + (k + 0.5) * (y2 - y1) / m``, pixel ``p`` at
    ``p + 0.5``, zero outside the mask) onto the image grid. ``method="torchvision"``:
    torchvision's whole-pixel pasting of the mask padded by one cell
    (``_torchvision_weights``), for models converted from torchvision. Either is
    thresholded at ``>= threshold``.

    Args:
      masks: [B, N, m, m] float probabilities in the frames of ``boxes``.
      boxes: [B, N, 4] float32 ``(y1, x1, y2, x2)`` in pixels of the target image.
      image_shape: ``(height, width)`` of the target image.
      threshold: binarization threshold (0.5 in the paper).
      method: one of ``PASTE_METHODS``.

    Returns:
      [B, N, height, width] bool.
    """
    if method not in PASTE_METHODS:
        raise ValueError(f"paste_masks: method must be one of {PASTE_METHODS}, got {method!r}")
    weights = _interpolation_weights if method == "exact" else _torchvision_weights
    masks = tf.cast(masks, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    mask_size = masks.shape[-1]
    height, width = image_shape[0], image_shape[1]
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    weights_y = weights(y1, y2, mask_size, height)  # [B, N, H, m]
    weights_x = weights(x1, x2, mask_size, width)  # [B, N, W, m]
    rows = tf.matmul(weights_y, masks)  # [B, N, H, m]
    pasted = tf.matmul(rows, weights_x, transpose_b=True)  # [B, N, H, W]
    return pasted >= threshold
