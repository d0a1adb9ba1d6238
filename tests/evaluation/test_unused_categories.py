"""A converted torchvision model's categories (90 slots, 10 of them "N/A") against COCO
ground truth that lacks the unused ids: evaluation runs and ignores those detections."""

import json

import numpy as np

from kmask.convert.coco_categories import COCO_CATEGORIES, TORCHVISION_COCO_CATEGORIES
from kmask.data.category_map import CategoryMap
from kmask.evaluation import COCOEvaluator


def test_detections_of_unused_slots_are_ignored(tmp_path):
    gt = {
        "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.png"}],
        "categories": [dict(c) for c in COCO_CATEGORIES],  # the 80 used ids
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 40],
             "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 13, "bbox": [50, 20, 30, 30],
             "area": 900, "iscrowd": 0},
        ],
    }  # fmt: skip
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    categories = CategoryMap([dict(c) for c in TORCHVISION_COCO_CATEGORIES])
    # Class k is COCO id k + 1: person 0, stop sign 12, the unused id 12 ("N/A") 11.
    exact = {"boxes": [[10, 10, 50, 40], [20, 50, 50, 80]], "scores": [0.9, 0.8]}
    unused = {"boxes": [[0, 0, 70, 90]], "scores": [0.95]}

    def evaluate(with_unused: bool) -> dict:
        evaluator = COCOEvaluator(path, categories)
        boxes = exact["boxes"] + (unused["boxes"] if with_unused else [])
        scores = exact["scores"] + (unused["scores"] if with_unused else [])
        classes = [0, 12] + ([11] if with_unused else [])
        evaluator.add_image(
            {
                "image_id": 1,
                "boxes": np.array(boxes, np.float32),
                "scores": np.array(scores, np.float32),
                "classes": np.array(classes, np.int32),
            }
        )
        metrics = evaluator.evaluate()
        ids = {r["category_id"] for r in evaluator.results}
        assert (12 in ids) == with_unused  # written to the results, as torchvision does
        return metrics

    assert evaluate(True) == evaluate(False)
    assert evaluate(True)["bbox_AP"] > 0.99
