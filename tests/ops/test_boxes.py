"""Box arithmetic against NumPy references and hand-computed cases."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kmask.ops import boxes as box_ops


def _random_boxes(rng: np.random.Generator, shape: tuple[int, ...], span: float = 500.0):
    yx = rng.uniform(0, span, shape + (2,))
    hw = rng.uniform(1, span / 2, shape + (2,))
    return np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)


def _numpy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = ih * iw
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_area_and_hand_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]], np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_ops.area(a).numpy(), [100, 0])
    iou = box_ops.pairwise_iou(a, b).numpy()
    np.testing.assert_allclose(iou, [[25 / 175, 1.0], [0.0, 0.0]], rtol=1e-6)


def test_pairwise_iou_batched_matches_numpy(rng):
    a = _random_boxes(rng, (2, 7))
    b = _random_boxes(rng, (2, 5))
    iou = box_ops.pairwise_iou(a, b).numpy()
    assert iou.shape == (2, 7, 5)
    for i in range(2):
        np.testing.assert_allclose(iou[i], _numpy_iou(a[i], b[i]), rtol=1e-5, atol=1e-7)


def test_encode_hand_case():
    anchor = np.array([[0, 0, 10, 20]], np.float32)  # centre (5, 10), h 10, w 20
    box = np.array([[2, 4, 22, 14]], np.float32)  # centre (12, 9), h 20, w 10
    deltas = box_ops.encode(box, anchor, (10, 10, 5, 5)).numpy()
    expected = [10 * 7 / 10, 10 * -1 / 20, 5 * math.log(2.0), 5 * math.log(0.5)]
    np.testing.assert_allclose(deltas[0], expected, rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(rng, weights):
    anchors = _random_boxes(rng, (3, 50))
    boxes = _random_boxes(rng, (3, 50))
    deltas = box_ops.encode(boxes, anchors, weights)
    decoded = box_ops.decode(deltas, anchors, weights).numpy()
    np.testing.assert_allclose(decoded, boxes, rtol=1e-4, atol=1e-3)


def test_decode_clamps_log_scale():
    anchor = np.array([[0, 0, 16, 16]], np.float32)
    deltas = np.array([[0, 0, 100.0, 100.0]], np.float32)
    decoded = box_ops.decode(deltas, anchor).numpy()[0]
    # exp(log(1000/16)) * 16 = 1000 pixels around the anchor centre (8, 8).
    np.testing.assert_allclose(decoded, [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)
    assert pytest.approx(math.log(1000 / 16)) == box_ops.DEFAULT_SCALE_CLAMP


def test_clip_boxes_per_image():
    boxes = np.array(
        [[[-5, -5, 50, 300], [10, 10, 20, 20]], [[-5, -5, 50, 300], [90, 0, 120, 10]]], np.float32
    )
    size = np.array([[40, 100], [100, 200]], np.int32)
    clipped = box_ops.clip_boxes(boxes, size).numpy()
    np.testing.assert_array_equal(clipped[0], [[0, 0, 40, 100], [10, 10, 20, 20]])
    np.testing.assert_array_equal(clipped[1], [[0, 0, 50, 200], [90, 0, 100, 10]])
    # Class-specific boxes [B, N, K, 4] broadcast the same way.
    clipped = box_ops.clip_boxes(boxes[:, :, None, :], size).numpy()
    np.testing.assert_array_equal(clipped[0, :, 0], [[0, 0, 40, 100], [10, 10, 20, 20]])


def test_float16_inputs_are_computed_in_float32():
    anchors = tf.constant([[1000.0, 1000.0, 1100.0, 1200.0]], tf.float16)
    deltas = tf.constant([[0.001, 0.001, 0.0, 0.0]], tf.float16)
    decoded = box_ops.decode(deltas, anchors)
    assert decoded.dtype == tf.float32
