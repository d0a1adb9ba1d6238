"""COCOEvaluator and Predictor in the three detector modes (Mask R-CNN, Faster R-CNN, RPN
only), on hand-made model outputs for a tiny hand-made COCO file, checked against
pycocotools run directly on the same detections written by hand as COCO results."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kmask.config import DataConfig
from kmask.evaluation import COCOEvaluator, DetectorMode, Predictor, format_metrics
from kmask.evaluation.coco_results import to_coco_results
from tests import fake_outputs as fake

MODES = ["mask_rcnn", "faster_rcnn", "rpn"]
LIMITS = (2, 100)
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory):
    return fake.write_ground_truth(tmp_path_factory.mktemp("gt"))


def _quiet(function, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def _cocoeval(gt_path, results, iou_type, use_cats=True, max_dets=None) -> COCOeval:
    coco = _quiet(COCO, str(gt_path))
    evaluation = COCOeval(coco, _quiet(coco.loadRes, results), iou_type)
    evaluation.params.imgIds = [image_id for image_id, _, _ in fake.IMAGES]
    evaluation.params.useCats = int(use_cats)
    if max_dets is not None:
        evaluation.params.maxDets = list(max_dets)
    _quiet(evaluation.evaluate)
    _quiet(evaluation.accumulate)
    return evaluation


def reference_ap(gt_path, results, iou_type) -> dict[str, float]:
    """pycocotools' AP of COCO results, the six summary numbers."""
    evaluation = _cocoeval(gt_path, results, iou_type)
    _quiet(evaluation.summarize)
    return {f"{iou_type}_{n}": float(v) for n, v in zip(AP_NAMES, evaluation.stats)}


def reference_recall(gt_path, proposals, limits) -> dict[str, float]:
    """Class-agnostic COCOeval recall (``useCats=0``, ``maxDets=limits``) averaged over the
    ten IoU thresholds; with these proposals it equals the greedy one-to-one AR."""
    results = [{**p, "category_id": fake.CATEGORIES[0]["id"]} for p in proposals]
    recall = _cocoeval(gt_path, results, "bbox", use_cats=False, max_dets=limits).eval[
        "recall"
    ]  # [T, K=1, areas, limits]
    metrics = {}
    for m, limit in enumerate(limits):
        for a, area in enumerate(("", "s", "m", "l")):  # all, small, medium, large
            values = recall[:, :, a, m]
            values = values[values > -1]
            metrics[f"AR{area}@{limit}"] = float(values.mean()) if values.size else -1.0
    return metrics


def _run(gt_path, mode, empty=False):
    outputs = fake.model_outputs(mode, empty=empty)
    predictor = Predictor(fake.FixedOutputModel(outputs), DataConfig())
    evaluator = COCOEvaluator(gt_path, proposal_limits=LIMITS)
    metrics = evaluator.run(predictor, [(fake.features_batch(), {})], progress=False)
    return evaluator, metrics, predictor, outputs


def test_mode_is_read_off_the_outputs():
    for mode in MODES:
        outputs = fake.model_outputs(mode)
        assert DetectorMode.from_outputs(outputs) is DetectorMode(mode)
    assert DetectorMode.MASK_RCNN.iou_types == ("bbox", "segm")
    assert DetectorMode.FASTER_RCNN.iou_types == ("bbox",)
    assert DetectorMode.RPN.iou_types == () and not DetectorMode.RPN.has_detections
    with pytest.raises(ValueError, match="neither detections"):
        DetectorMode.from_outputs({"image_id": np.zeros(1)})


@pytest.mark.parametrize("mode", MODES)
def test_metrics_equal_pycocotools(gt_path, mode):
    evaluator, metrics, predictor, outputs = _run(gt_path, mode)
    assert evaluator.mode is DetectorMode(mode)
    expected = reference_recall(gt_path, fake.proposal_results(), LIMITS)
    if mode != "rpn":
        expected.update(reference_ap(gt_path, fake.detection_results(), "bbox"))
    if mode == "mask_rcnn":
        # The pasted masks are the predictor's (paste_masks is tested on its own); here
        # they must be close to the hand-made rectangles and score as pycocotools says.
        results = []
        for detections in predictor.batch_detections(outputs):
            hand = fake.DETECTIONS[detections["image_id"]]
            assert len(detections["masks"]) == len(hand)
            for mask, (category, (x, y, w, h), score, kind) in zip(detections["masks"], hand):
                rectangle = np.zeros_like(mask)
                rectangle[y : y + h, x : x + w] = True
                if kind == "empty":
                    assert not mask.any()
                else:
                    assert (mask & rectangle).sum() / (mask | rectangle).sum() > 0.9
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                results.append(
                    {
                        "image_id": detections["image_id"],
                        "category_id": category,
                        "segmentation": rle,
                        "score": score,
                    }
                )
        expected.update(reference_ap(gt_path, results, "segm"))
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    # The hand-made case is not degenerate.
    if mode != "rpn":
        assert 0.2 < metrics["bbox_AP"] < 0.9
    if mode == "mask_rcnn":
        assert metrics["segm_AP"] < metrics["bbox_AP"]  # the empty mask
    assert 0.0 < metrics["AR@2"] < metrics["AR@100"] < 1.0
    assert metrics["ARs@100"] > 0 and metrics["ARm@100"] > 0 and metrics["ARl@100"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_summary_and_record_name_only_what_applies(gt_path, mode):
    evaluator, metrics, _, _ = _run(gt_path, mode)
    summary = evaluator.summary(metrics)
    record = evaluator.metrics_record(metrics)
    assert record["mode"] == mode and record["num_images"] == 2
    assert (
        record["evaluated"]
        == {
            "mask_rcnn": ["bbox", "segm", "proposals"],
            "faster_rcnn": ["bbox", "proposals"],
            "rpn": ["proposals"],
        }[mode]
    )
    json.dumps(record)  # JSON-serializable
    assert ("mask AP" in summary) == (mode == "mask_rcnn")
    rows = [line.split()[0] for line in summary.splitlines()]
    assert ("segm" in rows) == (mode == "mask_rcnn")
    assert ("bbox" in rows) == (mode != "rpn")
    assert ("box AP" in summary) == (mode != "rpn")
    assert "AR@100" in summary
    assert DetectorMode(mode).description in summary
    table = format_metrics(metrics)
    assert table.startswith("rpn") == (mode == "rpn")
    # One convention: the table's figures are the summary's fractions, not percent.
    assert f"AR@100 {metrics['AR@100']:.3f}" in table
    if mode != "rpn":
        assert f"AP {metrics['bbox_AP']:.3f}" in table
        assert f"box AP {metrics['bbox_AP']:.3f}" in summary
    if mode == "rpn":
        assert summary.splitlines()[-1].startswith("proposal AR@100")


@pytest.mark.parametrize("mode", MODES)
def test_results_file(gt_path, mode, tmp_path):
    evaluator, _, _, _ = _run(gt_path, mode)
    evaluator.write_results(tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    if mode == "rpn":
        expected = fake.proposal_results()
        assert [r["image_id"] for r in results] == [r["image_id"] for r in expected]
        for ours, theirs in zip(results, expected):
            np.testing.assert_allclose(ours["bbox"], theirs["bbox"], atol=1e-3)
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
            assert "category_id" not in ours
        return
    expected = fake.detection_results()
    assert len(results) == len(expected)
    for ours, theirs in zip(results, expected):
        assert (ours["image_id"], ours["category_id"]) == (
            theirs["image_id"],
            theirs["category_id"],
        )
        np.testing.assert_allclose(ours["bbox"], theirs["bbox"], atol=1e-3)
        assert ("segmentation" in ours) == (mode == "mask_rcnn")


@pytest.mark.parametrize("mode", MODES)
def test_no_detections_and_no_proposals(gt_path, mode, tmp_path):
    evaluator, metrics, predictor, outputs = _run(gt_path, mode, empty=True)
    for detections in predictor.batch_detections(outputs):
        height, width = detections["original_size"]
        assert detections["proposals"].shape == (0, 4)
        assert detections["proposal_scores"].shape == (0,)
        if mode != "rpn":
            assert detections["boxes"].shape == (0, 4)
            assert detections["scores"].shape == detections["classes"].shape == (0,)
            assert to_coco_results(detections, evaluator.categories) == []
        if mode == "mask_rcnn":
            assert detections["masks"].shape == (0, height, width)
    # Every size range has ground truth: pycocotools scores no detection as 0 everywhere.
    expected = {f"AR{a}@{k}": 0.0 for a in ("", "s", "m", "l") for k in LIMITS}
    for iou_type in DetectorMode(mode).iou_types:
        expected.update({f"{iou_type}_{name}": 0.0 for name in AP_NAMES})
    assert metrics == expected
    evaluator.write_results(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == []
    assert evaluator.summary(metrics)


def test_no_detection_keeps_pycocotools_minus_one(gt_path):
    """Only image 9 (small objects only) evaluated, without detections: -1 for the size
    ranges without ground truth, as pycocotools reports them."""
    coco = _quiet(COCO, str(gt_path))
    metrics = COCOEvaluator.coco_metrics(coco, [], "bbox", image_ids=[9])
    assert metrics == {
        "bbox_AP": 0.0,
        "bbox_AP50": 0.0,
        "bbox_AP75": 0.0,
        "bbox_APs": 0.0,
        "bbox_APm": -1.0,
        "bbox_APl": -1.0,
    }


def test_resized_pixels_on_request(gt_path):
    outputs = fake.model_outputs("mask_rcnn")
    predictor = Predictor(fake.FixedOutputModel(outputs), DataConfig())
    source = predictor.image_detections(outputs, 1)
    resized = predictor.image_detections(outputs, 1, source_pixels=False)
    np.testing.assert_allclose(resized["boxes"], fake.SCALE * source["boxes"])
    np.testing.assert_allclose(resized["proposals"], fake.SCALE * source["proposals"])
    assert resized["masks"].shape[1:] == (80, 80) and source["masks"].shape[1:] == (40, 40)
    # (y1, x1, y2, x2) of the hand-made [x, y, w, h] = [8, 8, 20, 16].
    np.testing.assert_allclose(source["boxes"][0], [8, 8, 24, 28])


def test_modes_cannot_be_mixed(gt_path):
    evaluator = COCOEvaluator(gt_path)
    outputs = fake.model_outputs("mask_rcnn")
    predictor = Predictor(fake.FixedOutputModel(outputs), DataConfig())
    first, second = predictor.batch_detections(outputs)
    evaluator.add_image(first)
    second = {k: v for k, v in second.items() if k != "masks"}
    with pytest.raises(ValueError, match="Faster R-CNN"):
        evaluator.add_image(second)
