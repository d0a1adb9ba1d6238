"""Average recall (AR) of region proposals, as the FPN paper and Detectron report it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# COCO's area ranges (pixels^2 of the ground truth's "area"), inclusive at both ends.
AREA_RANGES = {"": (0.0, 1e10), "s": (0.0, 32.0**2), "m": (32.0**2, 96.0**2),
               "l": (96.0**2, 1e10)}  # fmt: skip


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of ``(y1, x1, y2, x2)`` boxes ``[N, 4]`` and ``[M, 4]`` (continuous
    coordinates: a box's area is ``(y2 - y1) (x2 - x1)``); 0 for empty unions."""
    boxes1 = np.asarray(boxes1, np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, np.float64).reshape(-1, 4)
    top = np.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    left = np.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    bottom = np.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
    right = np.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    union = area1[:, None] + area2[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_overlaps(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """The IoU at which each ground truth is covered under one-to-one greedy assignment.

    Repeatedly takes the (proposal, ground truth) pair of highest IoU among those still
    free and assigns them to each other, ``min(#proposals, #gt)`` times; a ground truth
    left without a proposal gets 0.

    Returns:
      float64 ``[G]``.
    """
    overlaps = box_iou(proposals, gt_boxes)
    covered = np.zeros(len(gt_boxes))
    for _ in range(min(overlaps.shape)):
        best_proposal = overlaps.argmax(axis=0)
        best = overlaps[best_proposal, np.arange(overlaps.shape[1])]
        gt = int(best.argmax())
        covered[gt] = best[gt]
        overlaps[best_proposal[gt], :] = -1.0
        overlaps[:, gt] = -1.0
    return covered


class ProposalRecall:
    """Accumulates proposal recall over images; ``result()`` gives the AR metrics.

    For each proposal limit k and area range, the top-k proposals of an image are assigned
    greedily one-to-one to the image's non-crowd ground truth boxes in that range
    (``greedy_overlaps``); recall at IoU t is the fraction of all ground truth covered at
    IoU >= t, and AR is its mean over t = 0.50, 0.55, ..., 0.95 (Hosang et al. 2016, the
    definition of the FPN paper's AR and of Detectron's ``box_proposal`` evaluation).
    Unlike COCOeval's detection matching this is not driven by score order, so it is
    computed here rather than by pycocotools.

    Args:
      limits: proposal counts per image (AR@100, AR@1000).
    """

    def __init__(self, limits: Sequence[int] = (100, 1000)) -> None:
        self.limits = tuple(int(k) for k in limits)
        self.thresholds = np.linspace(0.5, 0.95, 10)
        self._covered: dict[tuple[int, str], list[np.ndarray]] = {
            (k, r): [] for k in self.limits for r in AREA_RANGES
        }

    def update(self, proposals: np.ndarray, gt_boxes: np.ndarray, gt_areas: np.ndarray) -> None:
        """Adds one image.

        Args:
          proposals: ``[P, 4]`` ``(y1, x1, y2, x2)``, best first, in the same pixels as
            the ground truth (original image).
          gt_boxes: ``[G, 4]`` ``(y1, x1, y2, x2)`` non-crowd ground truth.
          gt_areas: ``[G]`` their COCO ``area`` (what the area ranges refer to).
        """
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        gt_areas = np.asarray(gt_areas, np.float64).reshape(-1)
        proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
        for name, (low, high) in AREA_RANGES.items():
            inside = (gt_areas >= low) & (gt_areas <= high)
            for limit in self.limits:
                self._covered[(limit, name)].append(
                    greedy_overlaps(proposals[:limit], gt_boxes[inside])
                )

    def result(self) -> dict[str, float]:
        """``{"AR@k", "ARs@k", "ARm@k", "ARl@k"}`` for each limit k; -1 where no ground
        truth falls in the range (the pycocotools convention)."""
        metrics = {}
        for limit in self.limits:
            for name in AREA_RANGES:
                covered = np.concatenate(self._covered[(limit, name)] or [np.zeros(0)])
                if covered.size == 0:
                    value = -1.0
                else:
                    value = float(np.mean([(covered >= t).mean() for t in self.thresholds]))
                metrics[f"AR{name}@{limit}"] = value
        return metrics
