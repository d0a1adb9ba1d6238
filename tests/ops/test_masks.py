"""Mask targets from box-frame ground truth, and pasting masks into images."""

import numpy as np
import pytest

from kmask.ops.masks import mask_targets, paste_masks


def _paste_reference(mask: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-pixel bilinear sampling with zeros outside the mask, float64."""
    m = mask.shape[0]
    y1, x1, y2, x2 = box.astype(np.float64)
    out = np.zeros((height, width))
    padded = np.pad(mask.astype(np.float64), 1)
    for py in range(height):
        ty = (py + 0.5 - y1) * m / (y2 - y1) - 0.5 + 1  # index in the padded mask
        for px in range(width):
            tx = (px + 0.5 - x1) * m / (x2 - x1) - 0.5 + 1
            if not (0 <= ty <= m + 1 and 0 <= tx <= m + 1):
                continue
            y0, x0 = min(int(np.floor(ty)), m), min(int(np.floor(tx)), m)
            ly, lx = ty - y0, tx - x0
            out[py, px] = (
                (1 - ly) * (1 - lx) * padded[y0, x0]
                + (1 - ly) * lx * padded[y0, x0 + 1]
                + ly * (1 - lx) * padded[y0 + 1, x0]
                + ly * lx * padded[y0 + 1, x0 + 1]
            )
    return out


def test_paste_full_mask_covers_exactly_the_box_pixels():
    # One mask cell per pixel: cell centres fall on pixel centres, the paste is the box.
    masks = np.ones((1, 2, 10, 10), np.float32)
    boxes = np.array([[[10, 12, 20, 22], [3, 4, 13, 14]]], np.float32)
    pasted = paste_masks(masks, boxes, (30, 40)).numpy()[0]
    expected = np.zeros((2, 30, 40), bool)
    expected[0, 10:20, 12:22] = True
    expected[1, 3:13, 4:14] = True
    np.testing.assert_array_equal(pasted, expected)
    # Upsampled 4 -> 10 pixels: pixel 9 / 20 centres are 0.3 cells beyond the edge cells'
    # centres (weight 0.7 inside the box, 0.3 outside): rows 10..19 exactly, mid column.
    column = paste_masks(
        np.ones((1, 1, 4, 4), np.float32), np.array([[[10, 10, 20, 20]]], np.float32), (30, 30)
    ).numpy()[0, 0, :, 15]
    np.testing.assert_array_equal(np.nonzero(column)[0], np.arange(10, 20))


def test_paste_masks_matches_numpy_reference(rng):
    masks = rng.uniform(0, 1, (2, 3, 7, 7)).astype(np.float32)
    yx = rng.uniform(-5, 30, (2, 3, 2))
    hw = rng.uniform(3, 30, (2, 3, 2))
    boxes = np.concatenate([yx, yx + hw], -1).astype(np.float32)
    pasted = paste_masks(masks, boxes, (40, 48)).numpy()
    assert pasted.shape == (2, 3, 40, 48) and pasted.dtype == bool
    for b in range(2):
        for n in range(3):
            reference = _paste_reference(masks[b, n], boxes[b, n], 40, 48)
            decided = np.abs(reference - 0.5) > 1e-4
            np.testing.assert_array_equal(pasted[b, n][decided], (reference >= 0.5)[decided])
            assert pasted[b, n].any()


def test_mask_target_of_its_own_box_is_the_downsampled_mask():
    size = 112
    gt = np.zeros((1, 2, size, size), np.uint8)
    gt[0, 1, 28:84, 8:40] = 1  # rows 7..20 and cols 2..9 of a 28 grid
    boxes = np.array([[[0, 0, 10, 10], [50, 60, 162, 172]]], np.float32)
    rois = boxes[:, 1:2]
    target = mask_targets(gt, boxes, rois, np.array([[1]], np.int32), 28, implementation="tf")
    target = target.numpy()
    expected = np.zeros((28, 28), np.float32)
    expected[7:21, 2:10] = 1
    np.testing.assert_array_equal(target[0, 0], expected)


def test_mask_target_of_shifted_roi_is_zero_outside_the_ground_truth_box():
    gt = np.ones((2, 1, 16, 16), np.uint8)
    boxes = np.array([[[10, 10, 50, 50]], [[0, 0, 40, 40]]], np.float32)
    rois = np.array([[[10, 30, 50, 70]], [[0, 0, 40, 40]]], np.float32)
    target = mask_targets(gt, boxes, rois, np.zeros((2, 1), np.int32), 28, implementation="tf")
    target = target.numpy()
    expected = np.zeros((28, 28), np.float32)
    expected[:, :14] = 1
    np.testing.assert_array_equal(target[0, 0], expected)
    np.testing.assert_array_equal(target[1, 0], np.ones((28, 28)))


@pytest.mark.parametrize("mask_size", [56, 112])
def test_mask_targets_agree_with_the_analytic_shape(rng, mask_size):
    """Ellipse ground truth; RoIs jittered around its box; compare to the true ellipse."""

    def ellipse(y, x):
        return ((y - 60) / 30) ** 2 + ((x - 50) / 20) ** 2 <= 1

    box = np.array([30, 30, 90, 70], np.float32)
    cells = (np.arange(mask_size) + 0.5) / mask_size
    gt = ellipse(30 + 60 * cells[:, None], 30 + 40 * cells[None, :]).astype(np.uint8)
    jitter = rng.uniform(-10, 10, (5, 4)).astype(np.float32)
    rois = box + jitter
    target = mask_targets(
        gt[None, None],
        box[None, None],
        rois[None],
        np.zeros((1, 5), np.int32),
        28,
        implementation="tf",
    ).numpy()[0]
    for roi, t in zip(rois, target):
        centres = (np.arange(28) + 0.5) / 28
        truth = ellipse(
            roi[0] + (roi[2] - roi[0]) * centres[:, None],
            roi[1] + (roi[3] - roi[1]) * centres[None, :],
        )
        assert (t.astype(bool) != truth).mean() < 0.03
