"""COCO result lists as pycocotools ``COCO`` objects, without pycocotools' console chatter."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from pycocotools.coco import COCO

# The result field each COCOeval iouType scores.
_RESULT_FIELDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def quiet(function: Any, *args: Any) -> Any:
    """Calls a pycocotools function without its console chatter."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def load_results(coco: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """The detections ``COCO`` of ``results`` against the ground truth ``coco``, for
    ``COCOeval(coco, detections, iou_type)``.

    ``loadRes`` derives the instance area from the first of bbox, segmentation, keypoints
    it finds, so the fields other than ``iou_type``'s are dropped: mask AP and mask AR take
    the mask area (not the box's), keypoint AP the keypoints' extent. ``loadRes`` refuses
    an empty list: no results give an empty detection set (which scores 0, or -1).
    """
    if results:
        unused = set(_RESULT_FIELDS.values()) - {_RESULT_FIELDS[iou_type]}
        results = [{k: v for k, v in r.items() if k not in unused} for r in results]
        return quiet(coco.loadRes, results)
    detections = COCO()
    detections.dataset = {
        "images": list(coco.dataset.get("images", [])),
        "categories": list(coco.dataset.get("categories", [])),
        "annotations": [],
    }
    quiet(detections.createIndex)
    return detections
