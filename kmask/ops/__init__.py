"""Stateless tensor functions. Boxes are (y1, x1, y2, x2) float32 in input pixels."""

from kmask.ops import anchors, boxes, masks, matching, nms, sampling
from kmask.ops.roi_align import assign_levels, multi_level_roi_align, roi_align

multilevel_roi_align = multi_level_roi_align  # the function's name in kmask 0.1, for users

__all__ = [
    "anchors",
    "assign_levels",
    "boxes",
    "masks",
    "matching",
    "multi_level_roi_align",
    "multilevel_roi_align",
    "nms",
    "roi_align",
    "sampling",
]
