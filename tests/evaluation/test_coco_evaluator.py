"""COCOEvaluator against pycocotools with known answers: ground truth written back as
results scores AP 1.0, a hand-computed ranking scores 0.5, and detections in resized-image
pixels map back to the source images' pixels and original category ids."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from kmask.config import load_config
from kmask.data import DataError, open_dataset
from kmask.evaluation import COCOEvaluator, Predictor
from kmask.evaluation.coco_results import to_coco_results
from tests.toy_data import write_shapes

# The shapes categories 1, 2, 3 renamed to non-contiguous ids (class k <-> sorted ids).
_NEW_IDS = {1: 11, 2: 3, 3: 7}


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory) -> tuple[Path, Path]:
    root = write_shapes(tmp_path_factory.mktemp("shapes"), 0, 4, seed=3, max_shapes=5)
    path = root / "val.json"
    data = json.loads(path.read_text())
    for category in data["categories"]:
        category["id"] = _NEW_IDS[category["id"]]
    for annotation in data["annotations"]:
        annotation["category_id"] = _NEW_IDS[annotation["category_id"]]
    path.write_text(json.dumps(data))
    return path, root


def _gt_results(coco: COCO) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
            "segmentation": a["segmentation"],
        }
        for a in coco.dataset["annotations"]
    ]


def test_ground_truth_as_results_scores_one(shapes_val):
    coco = COCO(str(shapes_val[0]))
    for iou_type in ("bbox", "segm"):
        metrics = COCOEvaluator.coco_metrics(coco, _gt_results(coco), iou_type)
        for name in ("AP", "AP50", "AP75"):
            assert metrics[f"{iou_type}_{name}"] == 1.0
        for name in ("APs", "APm", "APl"):
            assert metrics[f"{iou_type}_{name}"] in (1.0, -1.0)


def test_hand_computed_average_precision(tmp_path):
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 5,
                "bbox": [10, 10, 40, 40],
                "area": 1600.0,
                "iscrowd": 0,
            }
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    coco = COCO(str(path))
    hit = {"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40]}
    miss = {"image_id": 1, "category_id": 5, "bbox": [60, 60, 30, 30]}
    # A false positive ranked above the only true positive: precision 1/2 at recall 1,
    # and 101-point interpolated AP = 0.5 at every IoU threshold.
    metrics = COCOEvaluator.coco_metrics(
        coco, [{**miss, "score": 0.9}, {**hit, "score": 0.8}], "bbox"
    )
    assert metrics["bbox_AP"] == pytest.approx(0.5)
    assert metrics["bbox_AP50"] == pytest.approx(0.5)
    # Ranked below it, the false positive costs nothing.
    metrics = COCOEvaluator.coco_metrics(
        coco, [{**miss, "score": 0.1}, {**hit, "score": 0.8}], "bbox"
    )
    assert metrics["bbox_AP"] == pytest.approx(1.0)
    # No detection at all: 0 where ground truth exists (one medium box), -1 elsewhere.
    assert COCOEvaluator.coco_metrics(coco, [], "bbox") == {
        "bbox_AP": 0.0,
        "bbox_AP50": 0.0,
        "bbox_AP75": 0.0,
        "bbox_APs": -1.0,
        "bbox_APm": 0.0,
        "bbox_APl": -1.0,
    }


def test_detections_map_back_to_source_pixels_and_original_ids(shapes_val):
    """The pipeline resizes 64 px images to 96 px; detections equal to the resized ground
    truth (box-frame masks included) must come back as the source annotations."""
    json_path, images_dir = shapes_val
    config = load_config(None, ["data.min_size=[96]", "data.max_size=200"])
    source = open_dataset(json_path=json_path, images_dir=images_dir)
    predictor = Predictor(keras.Sequential(), config.data)
    evaluator = COCOEvaluator(json_path, source.categories)
    coco = evaluator.coco
    for features, targets in source.build(config.data, training=False, batch_size=2):
        valid = targets["gt_classes"].numpy() >= 0
        outputs = {
            "detection_boxes": targets["gt_boxes"].numpy(),
            "detection_classes": np.maximum(targets["gt_classes"].numpy(), 0),
            "detection_scores": valid.astype(np.float32),
            "detection_masks": targets["gt_masks"].numpy().astype(np.float32),
            "num_detections": valid.sum(axis=1),
            **{k: features[k].numpy() for k in ("image_id", "image_size", "original_size")},
        }
        assert (features["image_size"].numpy() == 96).all()
        for index in range(len(valid)):
            detections = predictor.image_detections(outputs, index)
            evaluator.add_image(detections)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[detections["image_id"]]))
            assert detections["masks"].shape[1:] == (64, 64)
            for result, annotation in zip(
                to_coco_results(detections, source.categories), annotations
            ):
                assert result["category_id"] == annotation["category_id"]
                np.testing.assert_allclose(result["bbox"], annotation["bbox"], atol=2e-3)
                ours = mask_utils.decode(result["segmentation"]).astype(bool)
                theirs = coco.annToMask(annotation).astype(bool)
                assert (ours & theirs).sum() / (ours | theirs).sum() > 0.9
    assert sorted(evaluator.image_ids) == sorted(coco.getImgIds())
    metrics = evaluator.evaluate()
    assert metrics["bbox_AP"] == pytest.approx(1.0)
    assert metrics["segm_AP50"] == pytest.approx(1.0)
    assert metrics["segm_AP"] > 0.9
    assert not any(key.startswith("AR") for key in metrics)  # no proposals given


def test_results_file_and_errors(shapes_val, tmp_path):
    json_path, _ = shapes_val
    evaluator = COCOEvaluator(json_path)
    with pytest.raises(ValueError, match="no image"):
        evaluator.evaluate()
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 10:20, 5:30] = True
    evaluator.add_image(
        {
            "image_id": 1,
            "boxes": np.array([[10, 5, 20, 30]], np.float32),
            "scores": np.array([0.7]),
            "classes": np.array([2]),
            "masks": mask,
        }
    )
    out = tmp_path / "results.json"
    evaluator.write_results(out)
    (result,) = json.loads(out.read_text())
    assert result["category_id"] == 11 and result["bbox"] == [5.0, 10.0, 25.0, 10.0]
    assert (mask_utils.decode(result["segmentation"]) == mask[0]).all()
    with pytest.raises(DataError, match="image id 999"):
        evaluator.add_image(
            {
                "image_id": 999,
                "boxes": np.zeros((0, 4)),
                "scores": [],
                "classes": [],
                "masks": np.zeros((0, 64, 64), bool),
            }
        )
    with pytest.raises(DataError, match="not found"):
        COCOEvaluator(tmp_path / "missing.json")
    from kmask.data.category_map import CategoryMap

    with pytest.raises(DataError, match=r"category ids \[1\]"):
        COCOEvaluator(json_path, CategoryMap([{"id": 1, "name": "circle"}]))
