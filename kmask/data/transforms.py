"""Per-example transforms of the input pipeline, all TensorFlow ops (no Python per example).

The input of ``preprocess`` is a decoded example (what ``COCODataset.examples`` and
``ShardDataset.examples`` yield):

- ``image`` uint8 ``[H, W, 3]`` RGB;
- ``image_id`` int64 ``[]``;
- ``boxes`` float32 ``[n, 4]`` ``(y1, x1, y2, x2)`` in pixels of the source image, inside
  it, non-crowd instances only;
- ``classes`` int32 ``[n]`` contiguous 0-based class ids;
- ``masks`` uint8 ``[n, H, W]`` in {0, 1}, full-image masks;
- ``keypoints`` float32 ``[n, K, 3]`` ``(x, y, visibility)`` (COCO's order) in continuous
  pixel coordinates, only when the dataset has keypoints.

Coordinates are continuous: pixel ``p`` spans ``[p, p + 1)``, so a box ``(0, 0, H, W)``
covers the whole image, resizing by ``s`` multiplies coordinates by ``s`` and a left-right
flip maps ``x`` to ``W - x``.

``preprocess`` turns it into the ``(features, targets)`` element described in
``kmask.data``. Masks are cropped to their own box at the source resolution before the
image is resized, so resizing never touches them and the flip reverses their columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from kmask.config import DataConfig


def resized_size(
    height: tf.Tensor,
    width: tf.Tensor,
    min_size: tf.Tensor | int,
    max_size: int,
    fixed_size: Sequence[int] | None = None,
    rounding: str = "round",
) -> tf.Tensor:
    """Size after scaling the shorter side to ``min_size``, the longer to at most ``max_size``.

    One scale for both sides: ``s = min(min_size / short, max_size / long)`` (and, with
    ``fixed_size = (fh, fw)``, also ``<= fh / height`` and ``<= fw / width`` so that the
    image fits the fixed canvas), computed in float64 as Python does. Each side is
    ``round(side * s)`` (detectron2; ``rounding="floor"``: ``floor(side * s)``,
    torchvision), at least 1.

    Returns:
      int32 ``[2]`` ``(new_height, new_width)``.
    """
    size = tf.cast(tf.stack([height, width]), tf.float64)
    short = tf.reduce_min(size)
    long = tf.reduce_max(size)
    scale = tf.minimum(tf.cast(min_size, tf.float64) / short, float(max_size) / long)
    limit = None
    if fixed_size is not None:
        limit = tf.constant(fixed_size, tf.float64)
        scale = tf.minimum(scale, tf.reduce_min(limit / size))
    offset = 0.5 if rounding == "round" else 0.0
    new_size = tf.maximum(tf.floor(size * scale + offset), 1.0)
    if limit is not None:
        new_size = tf.minimum(new_size, limit)
    return tf.cast(new_size, tf.int32)


def scale_boxes(boxes: tf.Tensor, scale_yx: tf.Tensor) -> tf.Tensor:
    """Boxes ``[..., 4]`` ``(y1, x1, y2, x2)`` times ``scale_yx`` ``[2]`` (y and x factors)."""
    return boxes * tf.tile(scale_yx, [2])


def flip_boxes_left_right(boxes: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Boxes ``[..., 4]`` ``(y1, x1, y2, x2)`` of an image ``width`` wide, mirrored."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    width = tf.cast(width, boxes.dtype)
    return tf.stack([y1, width - x2, y2, width - x1], axis=-1)


def flip_keypoints_left_right(
    keypoints: tf.Tensor, width: tf.Tensor, permutation: Sequence[int]
) -> tf.Tensor:
    """Keypoints ``[n, K, 3]`` ``(x, y, v)`` mirrored; ``permutation`` swaps left and right.

    Unlabelled keypoints (``v == 0``) stay ``(0, 0, 0)``.
    """
    keypoints = tf.gather(keypoints, list(permutation), axis=1)
    x, y, v = tf.unstack(keypoints, axis=-1)
    x = tf.where(v > 0, tf.cast(width, keypoints.dtype) - x, x)
    return tf.stack([x, y, v], axis=-1)


def _sample_grid(low: tf.Tensor, high: tf.Tensor, size: tf.Tensor, mask_size: int):
    """Bilinear neighbours and weights of the M cell centres of ``[low, high)`` per instance.

    Returns int32 ``[n, M]`` lower and upper pixel indices and float32 ``[n, M]`` weights of
    the upper one, along an axis of ``size`` pixels (edge values hold beyond the outermost
    pixel centres).
    """
    cells = (tf.range(mask_size, dtype=tf.float32) + 0.5) / mask_size
    centres = low[:, tf.newaxis] + cells[tf.newaxis, :] * (high - low)[:, tf.newaxis]
    last = tf.cast(size - 1, tf.float32)
    position = tf.clip_by_value(centres - 0.5, 0.0, last)  # in pixel-centre index units
    lower = tf.floor(position)
    upper = tf.minimum(lower + 1.0, last)
    return tf.cast(lower, tf.int32), tf.cast(upper, tf.int32), position - lower


def crop_masks_to_boxes(masks: tf.Tensor, boxes: tf.Tensor, mask_size: int) -> tf.Tensor:
    """Each instance's mask resampled inside its own box to ``mask_size x mask_size``.

    Cell ``(i, j)`` is the mask sampled bilinearly at ``y = y1 + (i + 0.5) * (y2 - y1) / M``,
    ``x = x1 + (j + 0.5) * (x2 - x1) / M`` (continuous coordinates; pixel centres at
    ``p + 0.5``; beyond the outermost pixel centres the edge value holds), then
    thresholded: ``>= 0.5`` gives 1. Bilinear sampling of an axis-aligned grid is
    separable: rows are interpolated first (``[n, M, W]``), then columns.

    Args:
      masks: uint8 ``[n, H, W]`` full-image masks in {0, 1}.
      boxes: float32 ``[n, 4]`` ``(y1, x1, y2, x2)`` in pixels of the same grid.
      mask_size: M.
    Returns:
      uint8 ``[n, M, M]`` in {0, 1}.
    """
    y1, x1, y2, x2 = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    top, bottom, weight_y = _sample_grid(y1, y2, tf.shape(masks)[1], mask_size)
    left, right, weight_x = _sample_grid(x1, x2, tf.shape(masks)[2], mask_size)
    weight_y = weight_y[:, :, tf.newaxis]
    rows = tf.cast(tf.gather(masks, top, batch_dims=1), tf.float32) * (1.0 - weight_y)
    rows += tf.cast(tf.gather(masks, bottom, batch_dims=1), tf.float32) * weight_y
    weight_x = weight_x[:, tf.newaxis, :]
    cells = tf.gather(rows, left, axis=2, batch_dims=1) * (1.0 - weight_x)
    cells += tf.gather(rows, right, axis=2, batch_dims=1) * weight_x
    cells.set_shape([None, mask_size, mask_size])
    return tf.cast(cells >= 0.5, tf.uint8)


def pad_instances(
    values: tf.Tensor, max_instances: int, padding_value: float | int = 0
) -> tf.Tensor:
    """First dimension truncated or padded with ``padding_value`` to ``max_instances``."""
    values = values[:max_instances]
    count = tf.shape(values)[0]
    paddings = [[0, max_instances - count]] + [[0, 0]] * (values.shape.rank - 1)
    padded = tf.pad(values, paddings, constant_values=tf.cast(padding_value, values.dtype))
    padded.set_shape([max_instances] + values.shape.as_list()[1:])
    return padded


def padded_image_size(image_size: tf.Tensor, config: DataConfig) -> tf.Tensor:
    """int32 ``[2]``: ``config.image_size`` when set, else ``image_size`` rounded up to a
    multiple of ``config.size_divisibility``."""
    if config.image_size is not None:
        return tf.constant(config.image_size, tf.int32)
    divisor = config.size_divisibility
    return (image_size + divisor - 1) // divisor * divisor


def preprocess(
    example: Mapping[str, tf.Tensor],
    seed: tf.Tensor,
    *,
    config: DataConfig,
    training: bool,
    flip_permutation: Sequence[int] = (),
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """A decoded example (module docstring) to the model's ``(features, targets)``.

    In training the shorter side is drawn from ``config.min_size`` (one of the values, or
    with ``config.min_size_sampling == "range"`` an integer between the smallest and the
    largest) and the image is flipped left-right with probability 0.5
    (``config.horizontal_flip``); in evaluation the shorter side is ``max(config.min_size)``
    and nothing is random.

    Args:
      example: decoded example.
      seed: int64 scalar; all randomness is stateless and derived from it.
      config: the data configuration.
      training: whether to apply the random augmentation.
      flip_permutation: keypoint order after a flip (``CategoryMap.flip_permutation``).
    Returns:
      ``(features, targets)``, unbatched, as documented in ``kmask.data``.
    """
    image = example["image"]
    max_instances = config.max_instances
    boxes = tf.cast(example["boxes"][:max_instances], tf.float32)
    classes = tf.cast(example["classes"][:max_instances], tf.int32)
    masks = crop_masks_to_boxes(example["masks"][:max_instances], boxes, config.gt_mask_size)
    keypoints = example.get("keypoints")
    if keypoints is not None:
        keypoints = tf.cast(keypoints[:max_instances], tf.float32)

    original_size = tf.shape(image)[:2]
    if training and len(config.min_size) > 1 and config.min_size_sampling == "range":
        min_size = tf.random.stateless_uniform(
            [],
            tf.stack([seed, 0]),
            minval=min(config.min_size),
            maxval=max(config.min_size) + 1,
            dtype=tf.int32,
        )
    elif training and len(config.min_size) > 1:
        choice = tf.random.stateless_uniform(
            [], tf.stack([seed, 0]), maxval=len(config.min_size), dtype=tf.int32
        )
        min_size = tf.gather(tf.constant(config.min_size, tf.int32), choice)
    else:
        min_size = max(config.min_size)
    size = resized_size(
        original_size[0],
        original_size[1],
        min_size,
        config.max_size,
        config.image_size,
        config.resize_rounding,
    )
    resized = tf.image.resize(image, size, method="bilinear")
    scale_yx = tf.cast(size, tf.float32) / tf.cast(original_size, tf.float32)
    size_float = tf.cast(size, tf.float32)
    boxes = tf.minimum(scale_boxes(boxes, scale_yx), tf.tile(size_float, [2]))
    if keypoints is not None:
        scale_xy = tf.reverse(scale_yx, axis=[0])
        keypoints = tf.concat([keypoints[..., :2] * scale_xy, keypoints[..., 2:]], axis=-1)

    if training and config.horizontal_flip:
        flip = tf.random.stateless_uniform([], tf.stack([seed, 1])) < 0.5
        resized = tf.cond(flip, lambda: tf.reverse(resized, axis=[1]), lambda: resized)
        boxes = tf.where(flip, flip_boxes_left_right(boxes, size_float[1]), boxes)
        masks = tf.where(flip, tf.reverse(masks, axis=[2]), masks)
        if keypoints is not None:
            flipped = flip_keypoints_left_right(keypoints, size_float[1], flip_permutation)
            keypoints = tf.where(flip, flipped, keypoints)

    padded = padded_image_size(size, config)
    images = tf.pad(resized, [[0, padded[0] - size[0]], [0, padded[1] - size[1]], [0, 0]])
    if config.image_size is not None:
        images.set_shape([*config.image_size, 3])
    else:
        images.set_shape([None, None, 3])

    features = {
        "images": images,
        "image_size": size,
        "original_size": tf.cast(original_size, tf.int32),
        "image_id": tf.cast(example["image_id"], tf.int64),
    }
    targets = {
        "gt_boxes": pad_instances(boxes, max_instances, 0.0),
        "gt_classes": pad_instances(classes, max_instances, -1),
        "gt_masks": pad_instances(masks, max_instances, 0),
    }
    if keypoints is not None:
        targets["gt_keypoints"] = pad_instances(keypoints, max_instances, 0.0)
    return features, targets
