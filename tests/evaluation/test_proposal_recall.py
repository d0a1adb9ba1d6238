"""ProposalRecall on hand-computed cases."""

import numpy as np
import pytest

from kmask.evaluation import ProposalRecall
from kmask.evaluation.proposal_recall import box_iou, greedy_overlaps


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 5, 10, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]])


def test_greedy_assignment_is_one_to_one():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])  # two identical ground truths
    proposals = np.array([[0, 0, 10, 10], [50, 50, 60, 60]])
    np.testing.assert_allclose(greedy_overlaps(proposals, gt), [1.0, 0.0])
    np.testing.assert_allclose(greedy_overlaps(np.zeros((0, 4)), gt), [0.0, 0.0])


def test_average_recall_by_hand():
    # GT 0 (10x10, small) is found exactly; GT 1 (40x40 = 1600, medium) at IoU 0.64 by a
    # 25.6x40 box inside it: recall at t = .50, .55, .60 only.
    gt = np.array([[0, 0, 10, 10], [50, 50, 90, 90]], np.float64)
    areas = np.array([100.0, 1600.0])
    proposals = np.array([[0, 0, 10, 10], [50, 50, 75.6, 90]], np.float64)
    assert box_iou(proposals[1:], gt[1:])[0, 0] == pytest.approx(0.64)
    recall = ProposalRecall(limits=(1, 10))
    recall.update(proposals, gt, areas)
    metrics = recall.result()
    assert metrics["AR@10"] == pytest.approx((1.0 + 0.3) / 2)
    assert metrics["AR@1"] == pytest.approx(0.5)  # only the first proposal counts
    assert metrics["ARs@10"] == pytest.approx(1.0)
    assert metrics["ARm@10"] == pytest.approx(0.3)
    assert metrics["ARl@10"] == -1.0  # no large ground truth
    # A second image without any proposal halves the recall of its ground truth's range.
    recall.update(np.zeros((0, 4)), gt[:1], areas[:1])
    assert recall.result()["ARs@10"] == pytest.approx(0.5)
