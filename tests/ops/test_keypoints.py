"""Keypoint heatmap targets, their loss and heatmap decoding, against NumPy and PyTorch."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kmask.ops.keypoints import heatmaps_to_keypoints, keypoint_targets
from kmask.ops.losses import keypoint_loss

M = 56


def _reference_targets(keypoints, rois, matched, m):
    """detectron2's keypoints_to_heatmap, one keypoint at a time ((x, y, v) layout)."""
    batch, slots = matched.shape
    count = keypoints.shape[2]
    indices = np.zeros((batch, slots, count), np.int64)
    valid = np.zeros((batch, slots, count), bool)
    for b in range(batch):
        for q in range(slots):
            y1, x1, y2, x2 = rois[b, q]
            for k in range(count):
                x, y, v = keypoints[b, matched[b, q], k]
                row = m - 1 if y == y2 else math.floor((y - y1) * m / (y2 - y1))
                col = m - 1 if x == x2 else math.floor((x - x1) * m / (x2 - x1))
                if v > 0 and 0 <= row < m and 0 <= col < m:
                    indices[b, q, k] = row * m + col
                    valid[b, q, k] = True
    return indices, valid


def test_targets_match_numpy_reference(rng):
    batch, gts, slots, count = 2, 3, 5, 7
    y = rng.uniform(0, 120, (batch, gts, count))
    x = rng.uniform(0, 120, (batch, gts, count))
    v = rng.integers(0, 3, (batch, gts, count))
    keypoints = np.stack([x, y, v], -1).astype(np.float32)
    corner = rng.uniform(0, 60, (batch, slots, 2))
    rois = np.concatenate([corner, corner + rng.uniform(10, 70, (batch, slots, 2))], -1)
    rois = rois.astype(np.float32)
    keypoints[0, 0, 0, :2] = rois[0, 0, [3, 2]]  # on the bottom-right edge: last cell
    keypoints[0, 0, 0, 2] = 2
    matched = rng.integers(0, gts, (batch, slots)).astype(np.int32)
    matched[0, 0] = 0
    indices, valid = keypoint_targets(keypoints, rois, matched, M)
    expected_indices, expected_valid = _reference_targets(keypoints, rois, matched, M)
    np.testing.assert_array_equal(valid.numpy(), expected_valid)
    np.testing.assert_array_equal(indices.numpy()[expected_valid], expected_indices[expected_valid])
    assert indices.numpy()[0, 0, 0] == M * M - 1
    assert expected_valid.any() and not expected_valid.all()


def test_encode_decode_round_trip_within_one_cell(rng):
    """A keypoint goes in; decoding the one-hot heatmap of its target gives the centre of
    its cell: the same position within half a cell (the grid quantization)."""
    slots, count = 6, 5
    corner = rng.uniform(0, 100, (1, slots, 2))
    sizes = rng.uniform(20, 250, (1, slots, 2))
    rois = np.concatenate([corner, corner + sizes], -1).astype(np.float32)
    fraction = rng.uniform(0.0, 1.0, (1, slots, count, 2))
    yx = rois[:, :, None, :2] + fraction * sizes[:, :, None, :]
    xy = yx[..., ::-1]
    keypoints = np.concatenate([xy, np.full((1, slots, count, 1), 2.0)], -1).astype(np.float32)
    matched = np.arange(slots, dtype=np.int32)[None]
    indices, valid = keypoint_targets(keypoints, rois, matched, M)
    assert valid.numpy().all()
    logits = tf.one_hot(indices, M * M, on_value=20.0, off_value=0.0)  # [1, Q, K, m^2]
    logits = tf.transpose(tf.reshape(logits, [1, slots, count, M, M]), [0, 1, 3, 4, 2])
    decoded = heatmaps_to_keypoints(logits, rois).numpy()
    cell = sizes[:, :, None, ::-1] / M  # (w, h) / m
    error = np.abs(decoded[..., :2] - xy)
    # Half a cell, plus up to one output pixel (the peers' placement on the pixel grid).
    assert (error <= 0.5 * cell + 1.0).all(), error.max()


def _torch_decoding(
    logits: np.ndarray, boxes: np.ndarray, decoded: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The peers' method, one RoI at a time: resize each [K, m, m] heatmap bicubically
    (PyTorch, align_corners=False) to ceil(h) x ceil(w), take the first argmax, map its
    pixel centre into the box. Returns (x, y) [Q, K, 2], the resized maximum [Q, K] and
    the resized map's value at the pixels of ``decoded`` [Q, K, 2] (None without)."""
    torch = pytest.importorskip("torch")
    points, peaks, at_decoded = [], [], []
    for q, (heatmaps, (y1, x1, y2, x2)) in enumerate(zip(logits, boxes)):
        h, w = max(y2 - y1, np.float32(1.0)), max(x2 - x1, np.float32(1.0))
        rows, cols = math.ceil(h), math.ceil(w)
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(heatmaps[None]), size=(rows, cols), mode="bicubic", align_corners=False
        )[0].numpy()
        flat = resized.reshape(len(heatmaps), -1)
        position = flat.argmax(1)  # the first maximum, as torch.argmax
        x = (position % cols + 0.5) * np.float32(w / cols) + x1
        y = (position // cols + 0.5) * np.float32(h / rows) + y1
        points.append(np.stack([x, y], -1))
        peaks.append(flat.max(1))
        if decoded is not None:
            col = np.rint((decoded[q, :, 0] - x1) / (w / cols) - 0.5).astype(int)
            row = np.rint((decoded[q, :, 1] - y1) / (h / rows) - 0.5).astype(int)
            at_decoded.append(resized[np.arange(len(heatmaps)), row, col])
    return np.stack(points), np.stack(peaks), np.stack(at_decoded) if decoded is not None else None


def _random_boxes(rng, count, smallest, largest):
    corner = rng.uniform(0, 50, (count, 2))
    sizes = rng.uniform(smallest, largest, (count, 2))
    return np.concatenate([corner, corner + sizes], -1).astype(np.float32)


def _blobs(rng, shape, blobs=3):
    """Smooth heatmaps, a sum of Gaussian blobs, as a trained head gives."""
    grid = np.arange(M) + 0.5
    centres = rng.uniform(0, M, (*shape, blobs, 2))
    logits = np.zeros((*shape, M, M))
    for blob in range(blobs):
        cy, cx = centres[..., blob, 0, None, None], centres[..., blob, 1, None, None]
        logits += (3.0 + blob) * np.exp(-((grid[:, None] - cy) ** 2 + (grid - cx) ** 2) / 8.0)
    return logits.astype(np.float32)


@pytest.mark.parametrize("heatmaps", ["smooth", "speckled", "ties"])
def test_decoding_equals_torch_bicubic_resize_and_argmax(rng, heatmaps):
    """Every keypoint is PyTorch's pixel, for boxes from under 1 px to 1333 px a side:
    smooth maps; speckled random maps (many near-equal peaks, where bicubic overshoot can
    lift a far-off peak above the coarse maximum's: the old window search missed 26 of
    1020); and maps of few distinct values (exact ties: the first maximum in row-major
    order wins, as in torch.argmax)."""
    slots, count = 10, 17
    boxes = _random_boxes(rng, slots, 0.3, 300)
    boxes[0, 2:] = boxes[0, :2] + [1333.0, 1100.0]  # the largest resized map COCO gives
    boxes[1, 2:] = boxes[1, :2] + [0.25, 0.6]  # under a pixel: one output pixel
    if heatmaps == "smooth":
        logits = _blobs(rng, (slots, count))
    elif heatmaps == "speckled":
        logits = rng.normal(0.0, 3.0, (slots, count, M, M)).astype(np.float32)
    else:
        logits = rng.integers(0, 3, (slots, count, M, M)).astype(np.float32)
        logits[2] = 0.0  # constant maps: pixel (0, 0)
    decoded = heatmaps_to_keypoints(np.transpose(logits, (0, 2, 3, 1))[None], boxes[None])
    decoded = decoded.numpy()[0]
    points, peaks, at_decoded = _torch_decoding(logits, boxes, decoded)
    # The same pixel, or (rarely, on large boxes where neighbouring pixels near a peak
    # differ by a few ulps) a pixel whose value in PyTorch's own resized map is within
    # float32 rounding (2e-7 relative) of the maximum: PyTorch's vectorized resize rounds
    # its sums in another order, so no float32 evaluation decides such near-ties as it does.
    same = np.abs(decoded[..., :2] - points).max(-1) < 1e-3
    near_tie = np.abs(at_decoded - peaks) <= 4e-7 * np.abs(peaks)
    assert (same | near_tie).all(), np.argwhere(~(same | near_tie))
    assert same.mean() >= 0.99, (~same).sum()
    flat = logits.reshape(slots, count, -1).astype(np.float64)
    top = flat.max(-1)
    probability = np.exp(peaks - top) / np.exp(flat - top[..., None]).sum(-1)
    np.testing.assert_allclose(decoded[..., 2], probability, rtol=1e-4)


def test_decoding_evaluates_few_cells_of_a_single_peak(rng):
    """A trained head's single peak is found in the first step: the cells whose bound
    reaches the maximum are the few around it."""
    from kmask.ops.keypoints import _cell_bounds, _edge_padded

    logits = _blobs(rng, (4, 5), blobs=1)
    bounds = _cell_bounds(_edge_padded(tf.constant(logits)), M).numpy()
    boxes = np.tile(np.array([[0, 0, 900, 900]], np.float32), (4, 1))
    _, peaks, _ = _torch_decoding(logits, boxes)
    reaching = (bounds >= peaks[..., None, None]).sum((-2, -1))
    assert reaching.min() >= 1 and reaching.max() <= 8, reaching


def _reference_loss(logits, indices, valid):
    """Mean softmax cross-entropy over the valid keypoints, in float64."""
    batch, slots, m, _, count = logits.shape
    flat = np.transpose(logits, (0, 1, 4, 2, 3)).reshape(batch, slots, count, m * m)
    flat = flat.astype(np.float64)
    shifted = flat - flat.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    chosen = np.take_along_axis(log_softmax, indices[..., None], -1)[..., 0]
    return -chosen[valid].sum(), valid.sum()


def test_loss_matches_reference_and_ignores_invalid_keypoints(rng):
    logits = rng.normal(0, 2, (2, 3, 8, 8, 4)).astype(np.float32)
    indices = rng.integers(0, 64, (2, 3, 4)).astype(np.int32)
    valid = rng.uniform(size=(2, 3, 4)) < 0.5
    total, count = _reference_loss(logits, indices, valid)
    np.testing.assert_allclose(keypoint_loss(logits, indices, valid), total / count, rtol=1e-5)
    np.testing.assert_allclose(
        keypoint_loss(logits, indices, valid, normalizer=24.0), total / 24.0, rtol=1e-5
    )
    # Changing the targets or the logits of invalid keypoints changes nothing.
    other = np.where(valid, indices, (indices + 7) % 64)
    noisy = logits + np.where(valid[:, :, None, None, :], 0.0, 50.0).astype(np.float32)
    np.testing.assert_allclose(
        keypoint_loss(noisy, other, valid), keypoint_loss(logits, indices, valid), rtol=1e-6
    )


def test_loss_is_zero_with_finite_gradient_without_valid_keypoints():
    logits = tf.Variable(tf.random.normal([1, 2, 8, 8, 3]))
    with tf.GradientTape() as tape:
        loss = keypoint_loss(logits, tf.zeros([1, 2, 3], tf.int32), tf.zeros([1, 2, 3], tf.bool))
    gradient = tape.gradient(loss, logits)
    assert loss.numpy() == 0.0
    assert np.all(gradient.numpy() == 0.0)
