"""The kmask command end to end on a handful of 64 px images: make-shapes, train, resume,
evaluate, predict, and the errors of misuse (exit status and a message naming the
argument or file)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import kmask
from tests.cli_runner import CONFIGS, assert_ok, run_kmask
from tests.coco_matching import as_written, assert_same_picture, assert_same_results, predict_json
from tests.toy_data import tiny_overrides


def _tiny_sets(work: Path, drop: tuple[str, ...] = ()) -> list[str]:
    """``--set`` arguments of the tiny overrides, without the data paths (given as flags)
    and without the keys starting with ``drop``."""
    drop = ("train.json_path", "train.images_dir", "eval.json_path", "eval.images_dir", *drop)
    return [
        arg
        for item in tiny_overrides(work / "shapes")
        if not item.startswith(drop)
        for arg in ("--set", item)
    ]


_DATA_FLAGS = (
    "--train-json",
    "shapes/train.json",
    "--train-images",
    "shapes",
    "--val-json",
    "shapes/val.json",
    "--val-images",
    "shapes",
)


@pytest.fixture(scope="module")
def shapes_work(tmp_path_factory) -> Path:
    """A folder with a 64 px shapes dataset in ``shapes/``."""
    work = tmp_path_factory.mktemp("cli")
    assert_ok(
        run_kmask(
            "make-shapes",
            "--out",
            "shapes",
            "--num-train",
            "4",
            "--num-val",
            "2",
            "--image-size",
            "64",
            cwd=work,
        )
    )
    return work


@pytest.fixture(scope="module")
def trained(shapes_work) -> tuple[Path, Path]:
    """A shapes dataset and a run trained by ``kmask train`` (2 steps) from the shipped
    shapes_tiny config with tiny overrides."""
    work = shapes_work
    out = assert_ok(
        run_kmask(
            "train",
            "--config",
            str(CONFIGS / "shapes_tiny.yaml"),
            *_tiny_sets(work),
            "--set",
            "train.max_steps=2",
            "--set",
            "train.steps_per_epoch=2",
            *_DATA_FLAGS,
            "--out",
            "run",
            cwd=work,
        )
    )
    (work / "train.out").write_text(out)
    return work, work / "run"


def test_train_writes_a_complete_run_directory(trained):
    work, run = trained
    # Its log (a pipe, not a terminal) says what the silent first minute is and heads
    # the epoch (Keras heads only a fit of more than one epoch).
    log = (work / "train.out").read_text().splitlines()
    start = log.index("Epoch 1/1")
    assert log[start - 1].startswith("training steps 1..2; the first step traces the model")
    assert (run / "checkpoints" / "ckpt-00000002.weights.h5").is_file()
    config = (run / "config.yaml").read_text()
    assert str(work / "shapes" / "train.json") in config  # data paths made absolute
    assert (run / "categories.json").is_file()
    assert list((run / "logs" / "train").glob("events.out.tfevents.*"))


def test_refuses_to_overwrite_and_resumes(trained):
    work, run = trained
    again = run_kmask(
        "train",
        "--config",
        str(CONFIGS / "shapes_tiny.yaml"),
        "--out",
        str(run),
        cwd=work,
    )
    assert again.returncode == 1 and "--resume" in again.stderr
    out = assert_ok(
        run_kmask("train", "--resume", "--out", str(run), "--set", "train.max_steps=3", cwd=work)
    )
    assert "resuming from" in out and "trained to step 3" in out
    assert (run / "checkpoints" / "ckpt-00000003.weights.h5").is_file()


def test_evaluate_run(trained):
    work, run = trained
    out = assert_ok(run_kmask("evaluate", "--run", str(run), cwd=work))
    assert "mask AP" in out and "Mask R-CNN" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == "mask_rcnn"
    assert metrics["evaluated"] == ["bbox", "segm", "proposals"]
    for prefix in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert -1.0 <= metrics[f"{prefix}_{name}"] <= 1.0
    assert metrics["num_images"] == 2
    results = json.loads((run / "results.json").read_text())
    assert all(r["category_id"] in (1, 2, 3) for r in results)


def test_predict_checkpoint(trained, tmp_path):
    work, run = trained
    checkpoint = sorted((run / "checkpoints").glob("ckpt-*.weights.h5"))[-1]
    images = sorted((work / "shapes" / "val").glob("*.png"))
    out = assert_ok(
        run_kmask(
            "predict",
            "--checkpoint",
            str(checkpoint),
            *map(str, images),
            "--out",
            str(tmp_path / "pred"),
            "--score-threshold",
            "0.0",
            cwd=work,
        )
    )
    assert "wrote 2 PNGs" in out
    for image in images:
        picture = np.asarray(Image.open(tmp_path / "pred" / image.name))
        assert picture.shape == (512, 512, 3)  # 64 px drawn at 8x
    detections = json.loads((tmp_path / "pred" / "detections.json").read_text())
    for detection in detections:
        x, y, w, h = detection["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64.01 and y + h <= 64.01
        assert detection["category_name"] in ("circle", "square", "triangle")


def test_errors_name_the_argument(trained, tmp_path):
    work, run = trained
    result = run_kmask("train", "--config", "missing.yaml", "--out", str(tmp_path), cwd=work)
    assert result.returncode == 2 and "missing.yaml" in result.stderr
    result = run_kmask(
        "train",
        "--config",
        str(CONFIGS / "shapes_tiny.yaml"),
        "--set",
        "train.bogus=1",
        "--out",
        str(tmp_path),
        cwd=work,
    )
    assert result.returncode == 2 and "bogus" in result.stderr
    result = run_kmask("evaluate", "--run", str(tmp_path / "nothing"), cwd=work)
    assert result.returncode == 2 and "nothing" in result.stderr
    result = run_kmask("predict", "--run", str(run), str(tmp_path / "missing.png"), cwd=work)
    assert result.returncode == 2 and "missing.png" in result.stderr


# Overrides that make the tiny model a Faster R-CNN or an RPN, and the config keys of the
# heads they remove.
_MODES = {
    "faster_rcnn": (("model.mask_head=null",), ("model.mask_head.",)),
    "rpn": (
        ("model.mask_head=null", "model.box_head=null"),
        ("model.mask_head.", "model.box_head."),
    ),
}


@pytest.mark.parametrize("mode", sorted(_MODES))
def test_box_only_and_rpn_only_models(shapes_work, tmp_path, mode):
    """Train (1 step, evaluating at its end), evaluate and predict without a mask head,
    and without any RoI head: only the metrics and pictures that apply."""
    work = shapes_work
    overrides, removed = _MODES[mode]
    run = tmp_path / "run"
    out = assert_ok(
        run_kmask(
            "train",
            "--config",
            str(CONFIGS / "shapes_tiny.yaml"),
            *_tiny_sets(work, removed),
            *(a for o in overrides for a in ("--set", o)),
            "--set",
            "train.max_steps=1",
            "--set",
            "train.steps_per_epoch=1",
            "--set",
            "train.eval_every_epochs=1",
            *_DATA_FLAGS,
            "--out",
            str(run),
            cwd=work,
        )
    )
    # The evaluation during training prints only the rows that apply (the mode line names
    # what is left out).
    assert "loss_mask" not in out and "segm  AP" not in out and "val_segm" not in out
    assert ("AR@1000" in out) and (("bbox  AP" in out) == (mode == "faster_rcnn"))

    out = assert_ok(run_kmask("evaluate", "--run", str(run), cwd=work))
    assert "mask AP" not in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == mode and metrics["num_images"] == 2
    assert not any(key.startswith("segm_") for key in metrics)
    assert -1.0 <= metrics["AR@1000"] <= 1.0
    results = json.loads((run / "results.json").read_text())
    assert all("segmentation" not in r for r in results)
    if mode == "faster_rcnn":
        assert metrics["evaluated"] == ["bbox", "proposals"] and "box AP" in out
        assert -1.0 <= metrics["bbox_AP"] <= 1.0
        assert all(r["category_id"] in (1, 2, 3) for r in results)
    else:
        assert metrics["evaluated"] == ["proposals"] and "proposal AR@1000" in out
        assert not any(key.startswith("bbox_") for key in metrics)
        assert all("category_id" not in r for r in results)

    images = sorted((work / "shapes" / "val").glob("*.png"))
    out = assert_ok(
        run_kmask(
            "predict",
            "--run",
            str(run),
            *map(str, images),
            "--score-threshold",
            "0.0",
            "--num-proposals",
            "5",
            cwd=work,
        )
    )
    assert "wrote 2 PNGs" in out
    for image in images:
        picture = np.asarray(Image.open(run / "predictions" / image.name))
        assert picture.shape == (512, 512, 3)
    name = "proposals.json" if mode == "rpn" else "detections.json"
    predictions = json.loads((run / "predictions" / name).read_text())
    assert all("segmentation" not in p for p in predictions)
    if mode == "rpn":
        assert 0 < len(predictions) <= 10 and all("score" in p for p in predictions)


def test_usage_errors_go_through_one_format(tmp_path):
    """Errors found before any model is built: ``kmask COMMAND: error: MESSAGE``, exit 2."""
    result = run_kmask("make-shapes", "--out", "x", "--num-train", "-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("kmask make-shapes: error: --num-train must be >= 0")
    result = run_kmask(
        "predict",
        "--checkpoint",
        "missing.weights.h5",
        "--num-proposals",
        "-1",
        "image.png",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("kmask predict: error: --num-proposals must be >= 0")
    result = run_kmask("predict", "--checkpoint", "missing.weights.h5", "image.png", cwd=tmp_path)
    assert result.returncode == 2 and "kmask predict: error: " in result.stderr
    assert "missing.weights.h5" in result.stderr


def test_detect_equals_predict(trained, tmp_path):
    """``kmask.load_model(run).detect`` on paths, bytes and arrays of mixed sizes, in one
    batch, gives what ``kmask predict`` writes for each image alone: its detections.json
    (boxes, scores, category ids and names, RLE masks) and its pictures."""
    work, trained_run = trained
    # A copy that keeps every detection (the model's own 0.05 threshold off): a model
    # trained for a few steps may score none above it.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["box_head"]["score_threshold"] = 0.0
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    images = sorted((work / "shapes" / "val").glob("*.png"))
    wide = tmp_path / "wide.png"  # another size: another padded size in the same batch
    Image.open(images[0]).resize((96, 40)).save(wide)
    paths = [*images, wide]
    out = tmp_path / "pred"
    expected = predict_json(run, paths, out, 0.0, work)

    detector = kmask.load_model(run, batch_size=3)
    inputs = [images[0], images[1].read_bytes(), np.asarray(Image.open(wide).convert("RGB"))]
    results = detector.detect(inputs, score_threshold=0.0)
    assert [r.source for r in results] == [str(images[0]), None, None]
    assert [r.image_size for r in results] == [(64, 64), (64, 64), (40, 96)]
    for result, path in zip(results, paths):
        assert result.boxes.dtype == np.float32 and result.boxes.shape == (len(result), 4)
        assert result.masks.shape == (len(result), *result.image_size)
        assert_same_picture(result.draw(), np.asarray(Image.open(out / f"{path.stem}.png")))
    assert_same_results(as_written(results, [str(path) for path in paths]), expected)
    # RLE on request decodes to the same masks; one image in gives one result out.
    single = detector.detect(images[0], score_threshold=0.0, mask_format="rle")
    assert single.masks is None and len(single.rles) == len(results[0])
    assert_same_results(single.to_coco(1), results[0].to_coco(1))


def test_evaluate_in_tiles_equals_detect_in_tiles(trained, tmp_path):
    """``kmask evaluate --tile`` on a make-shapes scene writes, per image, what
    ``detect(tile=...)`` gives (RLE masks of the source size), and its AP is pycocotools'
    on those results; tile flags without ``--tile`` and a bad tile are refused by name."""
    work, trained_run = trained
    run = tmp_path / "run"  # every detection kept (see test_detect_equals_predict)
    shutil.copytree(trained_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["box_head"]["score_threshold"] = 0.0
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    scene = tmp_path / "scene"
    assert_ok(
        run_kmask(
            "make-shapes", "--out", str(scene), "--scene", "150x100", "--scene-objects", "8",
            "--object-size", "14,24", "--num-train", "0", "--num-val", "2", cwd=work,
        )
    )  # fmt: skip
    flags = ["--run", str(run), "--json", str(scene / "val.json"), "--images", str(scene)]
    results_out, metrics_out = tmp_path / "results.json", tmp_path / "metrics.json"
    out = assert_ok(
        run_kmask(
            "evaluate", *flags, "--tile", "64", "--tile-overlap", "0.25",
            "--results-out", str(results_out), "--metrics-out", str(metrics_out), cwd=work,
        )
    )  # fmt: skip
    assert "in 64 px tiles" in out
    written = json.loads(results_out.read_text())
    assert written and all(r["segmentation"]["size"] == [100, 150] for r in written)

    detector = kmask.load_model(run)
    expected = []
    for image_id in (1, 2):
        found = detector.detect(
            scene / "val" / f"{image_id:06d}.png", score_threshold=0.0, tile=64, tile_overlap=0.25
        )
        expected += found.to_coco(image_id)
    assert_same_results(written, expected)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO(str(scene / "val.json"))
    check = COCOeval(truth, truth.loadRes(written), "segm")
    check.evaluate(), check.accumulate(), check.summarize()
    metrics = json.loads(metrics_out.read_text())
    assert metrics["segm_AP"] == pytest.approx(check.stats[0], abs=1e-6)

    for bad, message in (
        (["--tile-overlap", "0.3"], "--tile-overlap and --tile-with-full-image need --tile"),
        (["--tile", "0"], "--tile: tile must be a positive integer"),
    ):
        result = run_kmask("evaluate", *flags, *bad, cwd=work)
        assert result.returncode == 2 and message in result.stderr
