"""COCO result lists: one image's detections or proposals as COCO result dicts, and result
lists as pycocotools ``COCO`` objects, without pycocotools' console chatter."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from kmask.data.category_map import CategoryMap

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


def to_coco_results(detections: dict[str, Any], categories: CategoryMap) -> list[dict[str, Any]]:
    """One image's detections (``Predictor.image_detections``) as COCO result dicts.

    Boxes ``(y1, x1, y2, x2)`` become ``bbox [x, y, w, h]``, classes original category ids;
    with masks (Mask R-CNN: bool ``masks [n, H, W]``, or ``rles``, ``n`` COCO RLEs with
    ``str`` counts, as tiled detection gives them) each result also gets its compressed
    RLE ``segmentation {"size", "counts"}``; with keypoints (Keypoint R-CNN) the results of the
    classes that define keypoints get ``keypoints [x1, y1, s1, ...]``: COCO pixel indices
    (continuous coordinates minus 0.5) and each keypoint's score. An image without
    detections, or the proposals of an RPN-only model (see ``to_proposal_results``), give
    ``[]``.
    """
    if "boxes" not in detections:
        return []
    boxes = np.asarray(detections["boxes"], np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return []
    rles: list[Any] = [None] * len(boxes)
    if "masks" in detections:
        masks = np.asarray(detections["masks"], np.uint8)
        encoded = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0))))
        rles = [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in encoded]
    elif "rles" in detections:
        rles = list(detections["rles"])
    keypoints = detections.get("keypoints")
    keypoint_classes = set(categories.keypoint_classes)
    results = []
    for i, (box, score, cls, rle) in enumerate(
        zip(boxes, detections["scores"], detections["classes"], rles)
    ):
        result = {
            "image_id": detections["image_id"],
            "category_id": categories.to_original_id(int(cls)),
            "bbox": _xywh(box),
            "score": round(float(score), 5),
        }
        if rle is not None:
            result["segmentation"] = rle
        if keypoints is not None and int(cls) in keypoint_classes:
            points = np.asarray(keypoints[i], np.float64) - [0.5, 0.5, 0.0]
            result["keypoints"] = [round(float(v), 3) for v in points.reshape(-1)]
        results.append(result)
    return results


def to_proposal_results(
    detections: dict[str, Any], limit: int | None = None
) -> list[dict[str, Any]]:
    """One image's proposals (``Predictor.image_detections``) as class-agnostic result
    dicts ``{"image_id", "bbox": [x, y, w, h], "score"}``, best first, at most ``limit``
    (all when None); no ``score`` when the model returns no ``proposal_scores``."""
    proposals = np.asarray(detections.get("proposals", np.zeros((0, 4))), np.float64)
    proposals = proposals.reshape(-1, 4)[:limit]
    scores = detections.get("proposal_scores")
    results = []
    for rank, box in enumerate(proposals):
        result = {"image_id": detections["image_id"], "bbox": _xywh(box)}
        if scores is not None:
            result["score"] = round(float(scores[rank]), 5)
        results.append(result)
    return results


def _xywh(box: np.ndarray) -> list[float]:
    y1, x1, y2, x2 = (float(v) for v in box)
    return [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
