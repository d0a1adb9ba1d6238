"""Box arithmetic on ``(y1, x1, y2, x2)`` boxes in absolute pixels, always float32.

Conventions: a box's height is ``y2 - y1`` and its width ``x2 - x1`` (continuous
coordinates, pixel ``p`` spans ``[p, p + 1)``); deltas are ``(dy, dx, dh, dw)`` in the R-CNN
parameterization, each divided by ``1 / weight`` (``weights=(10, 10, 5, 5)`` for the box head,
``(1, 1, 1, 1)`` for the RPN). All functions broadcast over leading batch dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

# detectron2 / torchvision clamp the predicted log-scale deltas here before exp().
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16.0)


def area(boxes: tf.Tensor) -> tf.Tensor:
    """Areas of boxes [..., 4] -> [...]; zero for degenerate boxes."""
    boxes = tf.cast(boxes, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def pairwise_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """IoU of every pair: boxes_a [..., N, 4], boxes_b [..., M, 4] -> [..., N, M].

    Pairs whose union is empty get IoU 0.
    """
    boxes_a = tf.cast(boxes_a, tf.float32)
    boxes_b = tf.cast(boxes_b, tf.float32)
    a_y1, a_x1, a_y2, a_x2 = [t[..., :, None] for t in tf.unstack(boxes_a, axis=-1)]
    b_y1, b_x1, b_y2, b_x2 = [t[..., None, :] for t in tf.unstack(boxes_b, axis=-1)]
    inter_h = tf.maximum(tf.minimum(a_y2, b_y2) - tf.maximum(a_y1, b_y1), 0.0)
    inter_w = tf.maximum(tf.minimum(a_x2, b_x2) - tf.maximum(a_x1, b_x1), 0.0)
    intersection = inter_h * inter_w
    union = area(boxes_a)[..., :, None] + area(boxes_b)[..., None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def _centers_and_sizes(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    height = y2 - y1
    width = x2 - x1
    return y1 + 0.5 * height, x1 + 0.5 * width, height, width


def encode(
    boxes: tf.Tensor, anchors: tf.Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
) -> tf.Tensor:
    """Regression targets taking anchors [..., 4] to boxes [..., 4] -> deltas [..., 4].

    ``dy = wy * (cy_box - cy_anchor) / h_anchor``, ``dh = wh * log(h_box / h_anchor)``,
    likewise for x and w. Anchors must have positive size; boxes with non-positive size get
    their size clamped to a tiny positive value so the result stays finite.
    """
    boxes = tf.cast(boxes, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    wy, wx, wh, ww = (float(w) for w in weights)
    acy, acx, ah, aw = _centers_and_sizes(anchors)
    bcy, bcx, bh, bw = _centers_and_sizes(boxes)
    ah = tf.maximum(ah, 1e-6)
    aw = tf.maximum(aw, 1e-6)
    dy = wy * (bcy - acy) / ah
    dx = wx * (bcx - acx) / aw
    dh = wh * tf.math.log(tf.maximum(bh, 1e-6) / ah)
    dw = ww * tf.math.log(tf.maximum(bw, 1e-6) / aw)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def decode(
    deltas: tf.Tensor,
    anchors: tf.Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> tf.Tensor:
    """Applies deltas [..., 4] to anchors [..., 4] (broadcastable) -> boxes [..., 4] float32.

    The inverse of ``encode``; ``dh / wh`` and ``dw / ww`` are clamped at ``scale_clamp``
    (log(1000/16)) before ``exp`` so that wild predictions cannot overflow.
    """
    deltas = tf.cast(deltas, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    wy, wx, wh, ww = (float(w) for w in weights)
    acy, acx, ah, aw = _centers_and_sizes(anchors)
    dy, dx, dh, dw = tf.unstack(deltas, axis=-1)
    dh = tf.minimum(dh / wh, scale_clamp)
    dw = tf.minimum(dw / ww, scale_clamp)
    cy = acy + dy / wy * ah
    cx = acx + dx / wx * aw
    h = ah * tf.exp(dh)
    w = aw * tf.exp(dw)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes: tf.Tensor, image_size: tf.Tensor) -> tf.Tensor:
    """Clips boxes [B, ..., 4] to ``[0, h] x [0, w]`` with image_size [B, 2] (h, w)."""
    boxes = tf.cast(boxes, tf.float32)
    size = tf.cast(image_size, tf.float32)
    extra_dims = len(boxes.shape) - 2
    size = tf.reshape(size, [-1] + [1] * extra_dims + [2])
    height, width = size[..., 0], size[..., 1]
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack(
        [
            tf.minimum(tf.maximum(y1, 0.0), height),
            tf.minimum(tf.maximum(x1, 0.0), width),
            tf.minimum(tf.maximum(y2, 0.0), height),
            tf.minimum(tf.maximum(x2, 0.0), width),
        ],
        axis=-1,
    )
