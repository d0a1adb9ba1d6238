"""Average recall of segment proposals through pycocotools' mask IoU (FPN paper, Table 6).

Segment proposals are class-agnostic masks ranked by objectness. They are written as COCO
``segm`` results (``to_segment_results``) and scored by ``COCOeval`` with
``iouType="segm"``, ``useCats=0`` (every proposal may cover any object) and
``maxDets=[100, 1000]``: recall at IoU t = 0.50, 0.55, ..., 0.95 of the score-ordered
greedy matching of the top-k proposals to the ground truth, averaged over t
(``segment_recall``). Table 6 reports AR, AR_s, AR_m, AR_l at 1000 proposals; the size
ranges are COCO's (small < 32^2 <= medium < 96^2 <= large, by the ground truth's ``area``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kmask.evaluation.coco_results import load_results, quiet

# COCOeval's default areaRng order and the suffixes of the metric names.
_AREA_NAMES = ("", "s", "m", "l")


def to_segment_results(
    detections: dict[str, Any], category_id: int, limit: int | None = None
) -> list[dict[str, Any]]:
    """One image's segment proposals as COCO ``segm`` result dicts, best first.

    Args:
      detections: ``Predictor.image_detections`` of a segment proposal model:
        ``image_id``, ``proposal_masks [p, H, W]`` bool (source pixels) and
        ``proposal_scores [p]``, best first.
      category_id: any category id of the ground truth (``useCats=0`` ignores it; COCO's
        result loader needs one).
      limit: keep the best ``limit`` (all when None).

    Returns:
      ``[{"image_id", "category_id", "segmentation": RLE {"size", "counts"}, "score"}]``.
    """
    masks = np.asarray(detections["proposal_masks"], bool)[:limit]
    if len(masks) == 0:
        return []
    scores = np.asarray(detections["proposal_scores"], np.float64)[:limit]
    rles = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0)).astype(np.uint8)))
    return [
        {
            "image_id": detections["image_id"],
            "category_id": int(category_id),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "score": round(float(score), 5),
        }
        for rle, score in zip(rles, scores)
    ]


def segment_recall(
    coco: COCO,
    results: list[dict[str, Any]],
    image_ids: Sequence[int],
    limits: Sequence[int] = (100, 1000),
) -> dict[str, float]:
    """Mask average recall of ``results`` (``to_segment_results``) against ``coco``.

    Args:
      coco: the ground truth (non-crowd instances count; crowd regions are ignored).
      results: COCO ``segm`` results of the images, any category id; may be empty.
      image_ids: the evaluated images.
      limits: proposal counts per image (COCOeval ``maxDets``).

    Returns:
      ``segm_AR@k``, ``segm_ARs@k``, ``segm_ARm@k``, ``segm_ARl@k`` for each limit k:
      COCOeval's recall averaged over the IoU thresholds; -1 where no ground truth falls
      in a size range (0 for ranges with ground truth when there are no results).
    """
    limits = sorted(int(k) for k in limits)
    detections = load_results(coco, results, "segm")
    evaluator = COCOeval(coco, detections, "segm")
    evaluator.params.imgIds = sorted({int(i) for i in image_ids})
    evaluator.params.useCats = 0
    evaluator.params.maxDets = limits
    quiet(evaluator.evaluate)
    quiet(evaluator.accumulate)
    recall = evaluator.eval["recall"]  # [T, K=1, A, M]
    metrics = {}
    for m, limit in enumerate(limits):
        for a, name in enumerate(_AREA_NAMES):
            values = recall[:, 0, a, m]
            values = values[values > -1]
            metrics[f"segm_AR{name}@{limit}"] = float(values.mean()) if values.size else -1.0
    return metrics
