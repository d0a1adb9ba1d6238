"""Anchor boxes for a feature pyramid (FPN paper section 4.1).

One anchor size per level (areas 32^2 .. 512^2 on P2 .. P6) times the aspect ratios
(h/w = 0.5, 1, 2), or several sizes on one level (the ResNet-C4 RPN: all five on C4, 15
anchors per cell, Faster R-CNN section 3.1.1), centred on each feature-map cell: cell
``(i, j)`` of a stride-``s`` level has its centre at ``((i + offset) * s, (j + offset) * s)``
in image pixels, with ``offset = 0.5`` the true centre of the cell (pixel ``p`` spans
``[p, p + 1)``).
Anchors are float32 ``(y1, x1, y2, x2)`` in image pixels, ordered (row, column, anchor) so
that they line up with a head output of shape [B, H, W, A] reshaped to [B, H*W*A].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from kmask.ops.levels import level_of, sorted_levels


def level_sizes(sizes: Sequence[float | Sequence[float]]) -> tuple[tuple[float, ...], ...]:
    """``sizes`` as one tuple of sizes per level: a number is a level with one size
    (``(32, 64)`` -> ``((32.0,), (64.0,))``), a sequence a level with several.

    Raises:
      ValueError: when the levels hold different numbers of sizes (the RPN head predicts
        the same number of anchors on every level).
    """
    levels = tuple(
        (float(size),) if isinstance(size, (int, float)) else tuple(float(s) for s in size)
        for size in sizes
    )
    if not levels or len({len(level) for level in levels}) != 1 or not levels[0]:
        raise ValueError(f"anchor sizes must give every level the same number of sizes: {sizes}")
    return levels


def cell_anchors(
    size: float | Sequence[float], aspect_ratios: Sequence[float], rounded: bool = False
) -> np.ndarray:
    """Anchors centred on (0, 0) for one level -> [A, 4] float32, A = sizes x ratios.

    Each anchor has area ``size**2`` and ``height / width = ratio``, ordered size-major
    (detectron2's order; one size per level in the FPN models); ``rounded`` rounds the
    corners to whole pixels as torchvision's ``AnchorGenerator`` does (half away from zero
    becomes half to even there too: ``torch.round``).
    """
    anchors = []
    for one_size in (size,) if isinstance(size, (int, float)) else size:
        for ratio in aspect_ratios:
            height = one_size * np.sqrt(ratio)
            width = one_size / np.sqrt(ratio)
            anchors.append([-height / 2.0, -width / 2.0, height / 2.0, width / 2.0])
    anchors = np.asarray(anchors, dtype=np.float32)
    return np.round(anchors) if rounded else anchors


def grid_anchors(
    height: tf.Tensor | int,
    width: tf.Tensor | int,
    stride: int | tuple[tf.Tensor | int, tf.Tensor | int],
    size: float | Sequence[float],
    aspect_ratios: Sequence[float],
    offset: float = 0.5,
    rounded: bool = False,
) -> tf.Tensor:
    """Anchors of one level with a ``height x width`` feature map -> [height*width*A, 4];
    ``stride`` in pixels, one for both axes or ``(stride_y, stride_x)``."""
    stride_y, stride_x = stride if isinstance(stride, tuple) else (stride, stride)
    base = tf.constant(cell_anchors(size, aspect_ratios, rounded))  # [A, 4]
    ys = (tf.cast(tf.range(height), tf.float32) + offset) * tf.cast(stride_y, tf.float32)
    xs = (tf.cast(tf.range(width), tf.float32) + offset) * tf.cast(stride_x, tf.float32)
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")  # [H, W]
    centers = tf.stack([cy, cx, cy, cx], axis=-1)  # [H, W, 4]
    anchors = centers[:, :, None, :] + base[None, None, :, :]  # [H, W, A, 4]
    return tf.reshape(anchors, [-1, 4])


def pyramid_anchors(
    feature_shapes: dict[str, tuple[tf.Tensor | int, tf.Tensor | int]],
    sizes: Sequence[float | Sequence[float]],
    aspect_ratios: Sequence[float],
    offset: float = 0.5,
    rounded: bool = False,
    stride_from_image: bool = False,
) -> dict[str, tf.Tensor]:
    """Anchors for every level.

    Args:
      feature_shapes: ``{"P2": (h, w), ...}`` feature-map sizes, levels in increasing order;
        level ``Pk`` has stride ``2**k``.
      sizes: the anchor sizes (sqrt of the area) of each level, same order as the levels:
        a number per level (FPN), or a sequence per level (``level_sizes``).
      aspect_ratios: height / width ratios shared by all levels.
      offset: anchor centre within a cell, in cells (0.5 = cell centre; detectron2 and
        torchvision use 0.0).
      rounded: round the cell anchors to whole pixels (torchvision).
      stride_from_image: each level's stride per axis is the padded image size (the
        finest level's size times its stride) floor-divided by the level's size, as
        torchvision's ``AnchorGenerator`` computes it, instead of ``2**k``. The two differ
        where a level is rounded up: P6 of an 800-pixel-high image (P5 25 rows, P6 13) has
        stride 800 // 13 = 61 in torchvision, 64 in detectron2 and the FPN paper.

    Returns:
      ``{"Pk": [h*w*A, 4]}`` float32 anchors.
    """
    levels = sorted_levels(feature_shapes)
    sizes = level_sizes(sizes)
    if len(levels) != len(sizes):
        raise ValueError(f"{len(levels)} levels {levels} but {len(sizes)} anchor sizes {sizes}")
    finest_height, finest_width = feature_shapes[levels[0]]
    image_height = finest_height * 2 ** level_of(levels[0])  # the padded image
    image_width = finest_width * 2 ** level_of(levels[0])
    anchors = {}
    for name, size in zip(levels, sizes):
        height, width = feature_shapes[name]
        stride = 2 ** level_of(name)
        if stride_from_image:
            stride = (image_height // height, image_width // width)
        anchors[name] = grid_anchors(height, width, stride, size, aspect_ratios, offset, rounded)
    return anchors
