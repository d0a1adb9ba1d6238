"""Matcher: thresholds, ignored band, low-quality matches, padded and empty ground truth."""

import numpy as np

from kmask.ops.matching import match


def test_thresholds_and_ignored_band():
    iou = np.array([[[0.8, 0.1], [0.5, 0.6], [0.2, 0.29], [0.7, 0.3]]], np.float32)
    valid = np.array([[True, True]])
    index, labels = match(iou, valid, 0.7, 0.3)
    np.testing.assert_array_equal(index.numpy(), [[0, 1, 1, 0]])
    np.testing.assert_array_equal(labels.numpy(), [[1, -1, 0, 1]])


def test_no_ignored_band_when_thresholds_equal():
    iou = np.array([[[0.5], [0.49], [0.0]]], np.float32)
    _, labels = match(iou, np.array([[True]]), 0.5, 0.5)
    np.testing.assert_array_equal(labels.numpy(), [[1, 0, 0]])


def test_low_quality_matches_including_ties():
    # gt 0's best IoU is 0.4 (rows 0 and 2, a tie); gt 1's best is row 1 (0.6); gt 2 is
    # padding and must be ignored even though its IoU column is high.
    iou = np.array(
        [[[0.4, 0.1, 0.9], [0.2, 0.6, 0.9], [0.4, 0.0, 0.9], [0.1, 0.35, 0.9]]], np.float32
    )
    valid = np.array([[True, True, False]])
    index, labels = match(iou, valid, 0.7, 0.3)
    np.testing.assert_array_equal(labels.numpy(), [[-1, -1, -1, -1]])
    index, labels = match(iou, valid, 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(labels.numpy(), [[1, 1, 1, -1]])
    np.testing.assert_array_equal(index.numpy(), [[0, 1, 0, 1]])


def test_low_quality_needs_positive_overlap():
    iou = np.zeros((1, 3, 1), np.float32)
    _, labels = match(iou, np.array([[True]]), 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(labels.numpy(), [[0, 0, 0]])


def test_padded_and_empty_ground_truth():
    iou = np.array([[[0.9, 0.5], [0.1, 0.2]], [[0.9, 0.8], [0.35, 0.0]]], np.float32)
    valid = np.array([[False, False], [True, False]])
    index, labels = match(iou, valid, 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(labels.numpy(), [[0, 0], [1, -1]])
    np.testing.assert_array_equal(index.numpy()[1], [0, 0])


def test_zero_ground_truth_slots():
    index, labels = match(
        np.zeros((2, 4, 0), np.float32),
        np.zeros((2, 0), bool),
        0.7,
        0.3,
        allow_low_quality_matches=True,
    )
    np.testing.assert_array_equal(labels.numpy(), np.zeros((2, 4)))
    np.testing.assert_array_equal(index.numpy(), np.zeros((2, 4)))
