"""Mask average recall of segment proposals through pycocotools (FPN Table 6), and the
segment proposal mode of the evaluator and the predictor."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from kmask.config import DataConfig
from kmask.evaluation import COCOEvaluator, DetectorMode, Predictor
from kmask.evaluation.coco_evaluator import format_metrics
from tests.toy_data import compressed_rle

HEIGHT, WIDTH = 160, 200
# Ground truth of two images: (image id, [(y1, x1, y2, x2) of an ellipse in that box]).
# Areas: small (< 32^2), medium, large (> 96^2).
OBJECTS = {
    1: [(10, 10, 30, 25), (40, 60, 100, 130), (0, 0, 150, 190)],
    2: [(100, 20, 150, 70), (20, 150, 38, 170)],
}


def ellipse(box) -> np.ndarray:
    y1, x1, y2, x2 = box
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
    root = tmp_path_factory.mktemp("segments")
    anns = []
    for image_id, boxes in OBJECTS.items():
        for box in boxes:
            mask = ellipse(box)
            ys, xs = np.nonzero(mask)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 5,
                    "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                             float(np.ptp(ys) + 1)],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": compressed_rle(mask),
                }
            )  # fmt: skip
    images = [{"id": i, "file_name": f"{i}.png", "height": HEIGHT, "width": WIDTH} for i in OBJECTS]
    path = root / "val.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 5, "name": "x"}]})
    )
    return path


def evaluate(json_path, proposals_of_image) -> dict:
    evaluator = COCOEvaluator(json_path)
    for image_id, masks in proposals_of_image.items():
        masks = np.asarray(masks, bool).reshape(-1, HEIGHT, WIDTH)
        evaluator.add_image(
            {
                "image_id": image_id,
                "original_size": (HEIGHT, WIDTH),
                "proposals": np.zeros((len(masks), 4), np.float32),
                "proposal_scores": np.linspace(1.0, 0.5, len(masks)),
                "proposal_masks": masks,
            }
        )
    assert evaluator.mode is DetectorMode.SEGMENT_PROPOSALS
    assert evaluator.evaluated == ("segment_proposals",)
    metrics = evaluator.evaluate()
    assert "AR@100" not in metrics  # no box recall of the windows
    return metrics


def test_perfect_proposals_have_mask_ar_one(annotations):
    metrics = evaluate(
        annotations, {i: [ellipse(b) for b in boxes] for i, boxes in OBJECTS.items()}
    )
    for limit in (100, 1000):
        for area in ("", "s", "m", "l"):
            assert metrics[f"segm_AR{area}@{limit}"] == pytest.approx(1.0), (area, limit)


def test_empty_and_wrong_proposals_have_mask_ar_zero(annotations):
    empty = evaluate(annotations, {i: np.zeros((5, HEIGHT, WIDTH)) for i in OBJECTS})
    assert all(v == 0.0 for v in empty.values()), empty
    # Wrong: each image gets the other image's objects (no IoU reaches 0.5).
    wrong = evaluate(
        annotations, {1: [ellipse(b) for b in OBJECTS[2]], 2: [ellipse(b) for b in OBJECTS[1][:2]]}
    )
    assert wrong["segm_AR@1000"] == pytest.approx(0.0)
    no_results = evaluate(annotations, {i: np.zeros((0, HEIGHT, WIDTH)) for i in OBJECTS})
    assert all(v == 0.0 for v in no_results.values())


def test_partial_overlap_and_the_proposal_limit(annotations):
    # Image 1: its medium object covered at an IoU computed here, its small and large ones
    # missed; image 2: its medium object found only at rank 150, its small one missed.
    target = ellipse(OBJECTS[1][1])
    shifted = np.roll(target, 6, axis=1)
    iou = (target & shifted).sum() / (target | shifted).sum()
    assert 0.5 < iou < 0.95
    rank_150 = [np.zeros((HEIGHT, WIDTH), bool)] * 149 + [ellipse(OBJECTS[2][0])]
    metrics = evaluate(annotations, {1: [shifted], 2: rank_150})
    thresholds = np.linspace(0.5, 0.95, 10)
    covered_1 = (iou >= thresholds).mean()
    # 5 objects: at 1000 proposals two are found (one at IoU `iou`, one perfectly).
    assert metrics["segm_AR@1000"] == pytest.approx((covered_1 + 1.0) / 5)
    assert metrics["segm_AR@100"] == pytest.approx(covered_1 / 5)
    # Both found objects are the only medium ones (COCO: 32^2 <= area < 96^2).
    areas = [ellipse(b).sum() for boxes in OBJECTS.values() for b in boxes]
    assert [32**2 <= a < 96**2 for a in areas] == [False, True, False, True, False]
    assert metrics["segm_ARm@1000"] == pytest.approx((covered_1 + 1.0) / 2)
    assert metrics["segm_ARs@1000"] == 0.0 and metrics["segm_ARl@1000"] == 0.0
    assert "mask  AR@100" in format_metrics(metrics)


def test_summary_names_the_mask_recall(annotations):
    evaluator = COCOEvaluator(annotations)
    for image_id, boxes in OBJECTS.items():
        masks = np.stack([ellipse(b) for b in boxes])
        evaluator.add_image(
            {
                "image_id": image_id,
                "proposals": np.zeros((len(masks), 4), np.float32),
                "proposal_scores": np.ones(len(masks)),
                "proposal_masks": masks,
            }
        )
    summary = evaluator.summary(evaluator.evaluate())
    assert "mask AR@1000 1.000" in summary
    assert "segment proposals" in summary
    assert evaluator.metrics_record({})["mode"] == "segment_proposals"
    results = evaluator.results
    assert len(results) == 5 and all("segmentation" in r for r in results)


def test_predictor_pastes_the_window_masks_into_the_source_image():
    # A model output in a frame twice the source size: one window half outside the image,
    # its mask all foreground in the window's left half.
    mask = np.zeros((14, 14), np.float32)
    mask[:, :7] = 1.0
    outputs = {
        "proposals": np.array([[[-20, 40, 60, 120], [0, 0, 0, 0]]], np.float32),
        "proposal_scores": np.array([[0.9, 0.0]], np.float32),
        "proposal_masks": np.stack([mask, np.zeros_like(mask)])[None],
        "num_proposals": np.array([1], np.int32),
        "image_size": np.array([[80, 100]], np.int32),
        "original_size": np.array([[40, 50]], np.int32),
        "image_id": np.array([3]),
    }
    assert DetectorMode.from_outputs(outputs) is DetectorMode.SEGMENT_PROPOSALS
    predictor = Predictor(SimpleNamespace(predict_step=lambda features: features), DataConfig())
    detections = predictor.image_detections(outputs, 0)
    pasted = detections["proposal_masks"]
    assert pasted.shape == (1, 40, 50)
    # Source window (-10, 20, 30, 60): the left half x in [20, 40), y in [0, 30).
    expected = np.zeros((40, 50), bool)
    expected[0:30, 20:40] = True
    # Border pixels straddle a mask edge by 0.325 cell (bilinear weight 0.675 each way):
    # the bottom corners get 0.675^2 < 0.5.
    expected[29, [20, 39]] = False
    np.testing.assert_array_equal(pasted[0], expected)
    np.testing.assert_allclose(detections["proposals"], [[0, 20, 30, 50]])  # clipped
