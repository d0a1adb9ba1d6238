"""Keypoint results and pycocotools' OKS evaluation, drawn skeletons."""

import json

import numpy as np
import pytest

from kmask.data import CategoryMap
from kmask.data.stick_figures_dataset import StickFiguresDataset
from kmask.evaluation import COCOEvaluator
from kmask.evaluation.coco_evaluator import format_metrics
from kmask.evaluation.coco_results import to_coco_results
from kmask.visualization import draw_detections


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """A stick-figure validation split (96 px, 6 images) and its COCO dict."""
    root = tmp_path_factory.mktemp("figures")
    paths = StickFiguresDataset(96, seed=3).write(root, 0, 6, progress=False)
    return paths["val"], json.loads(paths["val"].read_text())


def _ground_truth_detections(data, image_id, shift=0.0):
    """The image's annotations as ``Predictor.image_detections`` would give them:
    boxes (y1, x1, y2, x2), keypoints (x, y, score) continuous (COCO index + 0.5)."""
    annotations = [a for a in data["annotations"] if a["image_id"] == image_id]
    boxes = np.array([[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3],
                       a["bbox"][0] + a["bbox"][2]] for a in annotations], np.float32)  # fmt: skip
    keypoints = np.array([a["keypoints"] for a in annotations], np.float32).reshape(
        len(annotations), -1, 3
    )
    labelled = keypoints[..., 2] > 0
    keypoints[..., :2] += 0.5 + shift
    keypoints[..., 2] = np.where(labelled, 0.9, 0.0)
    return {
        "image_id": image_id,
        "boxes": boxes.reshape(-1, 4),
        "scores": np.linspace(0.99, 0.9, len(annotations)).astype(np.float32),
        "classes": np.zeros(len(annotations), np.int32),
        "keypoints": keypoints,
    }


def test_results_carry_coco_pixel_indices(figures):
    _, data = figures
    categories = CategoryMap(data["categories"])
    detections = _ground_truth_detections(data, 1)
    results = to_coco_results(detections, categories)
    annotations = [a for a in data["annotations"] if a["image_id"] == 1]
    for result, annotation in zip(results, annotations):
        got = np.reshape(result["keypoints"], (-1, 3))
        expected = np.reshape(annotation["keypoints"], (-1, 3))
        labelled = expected[:, 2] > 0
        np.testing.assert_allclose(got[labelled, :2], expected[labelled, :2], atol=1e-3)


def test_perfect_keypoints_score_ap_one_and_shifted_ones_less(figures):
    path, data = figures
    image_ids = [image["id"] for image in data["images"]]
    evaluator = COCOEvaluator(path)
    for image_id in image_ids:
        evaluator.add_image(_ground_truth_detections(data, image_id))
    assert evaluator.evaluated == ("bbox", "keypoints")
    metrics = evaluator.evaluate()
    assert metrics["keypoints_AP"] == pytest.approx(1.0)
    assert metrics["bbox_AP"] == pytest.approx(1.0)
    assert "kpts" in format_metrics(metrics)
    assert "keypoint AP 1.000" in evaluator.summary(metrics)
    # Three pixels off on figures of 30..70 px: OKS well below 1.
    evaluator.reset()
    for image_id in image_ids:
        evaluator.add_image(_ground_truth_detections(data, image_id, shift=3.0))
    shifted = evaluator.evaluate()
    assert 0.0 < shifted["keypoints_AP"] < 0.9
    assert shifted["bbox_AP"] == pytest.approx(1.0)


def test_skeleton_is_drawn_in_the_instance_colour():
    image = np.zeros((64, 64, 3), np.uint8)
    keypoints = np.array([[[10.0, 10.0, 0.9], [50.0, 10.0, 0.9], [30.0, 50.0, 0.01]]])
    picture = draw_detections(
        image,
        np.array([[5.0, 5.0, 60.0, 60.0]]),
        np.array([0]),
        np.array([0.9]),
        None,
        ["person"],
        keypoints=keypoints,
        skeleton=[(0, 1), (1, 2)],
        labelled=False,
    )
    factor = picture.shape[0] // 64
    row = picture[10 * factor, 20 * factor : 40 * factor]
    assert (row == row[0]).all() and row[0].any()  # the edge 0-1, one colour
    # Keypoint 2 is below the drawing threshold: neither it nor its edge is drawn.
    assert not picture[50 * factor, 30 * factor].any()
