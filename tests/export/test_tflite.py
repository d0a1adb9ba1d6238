"""TFLite export: the LiteRT interpreter (``ai-edge-litert``), in a process without TensorFlow
or kmask, gives the Keras model's detections; LiteRT builtin ops only (NMS as
NON_MAX_SUPPRESSION_V5, no Flex or custom op); float16 and int8-dynamic agree to the stated
tolerances; the output path is checked before the conversion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kmask.config import Config
from tests.export.conftest import (
    CATEGORIES,
    export_test_model,
    reference,
    scale_kernel,
    shapes_image,
)
from tests.toy_data import tiny_config

pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (extra [dev])")

RUN_LITERT = Path(__file__).with_name("run_litert.py")
SIZE = 64  # the export's input: [1, 64, 64, 3], the tiny config's evaluation size


@pytest.fixture(scope="module")
def narrow(tmp_path_factory) -> tuple[keras.Model, Config]:
    """The tiny Mask R-CNN on a narrow ResNet-50 (4 channels per group, no normalization:
    a 15 MiB file that converts in seconds), with its classifier and objectness scaled so
    that scores vary between 0.7 and 0.99 (no ties at 1.0 that would make the order of the
    detections arbitrary)."""
    config = tiny_config(
        tmp_path_factory.mktemp("unused_data"),
        f"data.min_size=[{SIZE}]",
        "data.max_size=96",
        "model.backbone.resnet.width_per_group=4",
        "model.backbone.norm=none",
    )
    model = export_test_model(config, seed=7)  # classifier x300
    scale_kernel(model.roi_heads.box_head.cls_score, 0.001)
    scale_kernel(model.rpn.head.objectness, 0.01)
    return model, config


@pytest.fixture(scope="module")
def square_images() -> np.ndarray:
    """uint8 [3, 64, 64, 3] shapes images, the export's input size."""
    return np.stack([shapes_image(SIZE, SIZE, seed) for seed in range(3)])


@pytest.fixture(scope="module")
def keras_detections(narrow, square_images) -> list[dict[str, np.ndarray]]:
    """The Keras model's detections, each image alone (``reference``: kmask's evaluation
    preprocessing and ``Predictor``)."""
    model, config = narrow
    want = [reference(model, config, [image])[0] for image in square_images]
    assert all(len(w["scores"]) > 0 for w in want)  # not an empty-vs-empty comparison
    assert all(np.ptp(w["scores"]) > 0.05 for w in want)  # scores vary: no ties
    return want


@pytest.fixture(scope="module")
def float32_path(narrow, tmp_path_factory) -> Path:
    return export(narrow, "float32", tmp_path_factory.mktemp("tflite"))


def export(narrow, precision: str, folder: Path) -> Path:
    from kmask.export import export_tflite

    model, config = narrow
    return export_tflite(
        model, folder / f"{precision}.tflite", config.data, CATEGORIES, precision=precision
    )


def run_litert(path: Path, cases: dict[str, np.ndarray], folder: Path) -> dict:
    """``{case: {output: array}, "ops": [names]}`` of the TFLite model at ``path`` on each
    batch of ``cases`` (each image alone), run by LiteRT in a process without TensorFlow
    (``run_litert.py``, started with ``python -I``)."""
    np.savez(folder / "inputs.npz", **cases)
    result = subprocess.run(
        [sys.executable, "-I", str(RUN_LITERT), str(path), "inputs.npz", "out.npz"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    served: dict = {name: {} for name in cases}
    for key, value in np.load(folder / "out.npz").items():
        if key == "ops":
            served["ops"] = value.tolist()
            continue
        name, output = key.split("/", 1)
        served[name][output] = value
    return served


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of (y1, x1, y2, x2) boxes a [N, 4] and b [M, 4]."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), -1)
    area_a = np.prod(a[:, 2:] - a[:, :2], -1)
    area_b = np.prod(b[:, 2:] - b[:, :2], -1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def test_float32_runs_without_tensorflow_and_matches_keras(
    float32_path, square_images, keras_detections, tmp_path
):
    served = run_litert(float32_path, {"images": square_images}, tmp_path)
    got = served["images"]
    # LiteRT builtins only, NMS among them; no Flex ("CUSTOM:Flex...") or custom op and no
    # variables (weights are constants).
    assert "NON_MAX_SUPPRESSION_V5" in served["ops"]
    assert not [op for op in served["ops"] if op.startswith("CUSTOM") or "VARIABLE" in op]
    assert got["detection_boxes"].shape == (3, 20, 4)
    for index, want in enumerate(keras_detections):
        count = int(got["num_detections"][index])
        assert count == len(want["scores"])
        np.testing.assert_array_equal(got["detection_classes"][index, :count], want["classes"])
        np.testing.assert_allclose(got["detection_boxes"][index, :count], want["boxes"], atol=1.0)
        np.testing.assert_allclose(
            got["detection_scores"][index, :count], want["scores"], atol=1e-3
        )
        masks = got["detection_masks"][index, :count]
        np.testing.assert_allclose(masks, want["masks"], atol=1e-2)
        assert np.mean((masks >= 0.5) == (want["masks"] >= 0.5)) >= 0.999
        np.testing.assert_array_equal(got["original_size"][index], [SIZE, SIZE])


@pytest.mark.parametrize(
    ("precision", "matched", "score_tolerance"),
    [("float16", 0.9, 0.02), ("int8-dynamic", 0.5, 0.05)],
)
def test_reduced_precision_agrees_with_keras(
    narrow,
    float32_path,
    square_images,
    keras_detections,
    tmp_path,
    precision,
    matched,
    score_tolerance,
):
    """Stated agreement: of the Keras model's detections, at least ``matched`` (90% for
    float16, 50% for int8-dynamic) have a TFLite detection of the same class with box IoU
    >= 0.5 and a score within ``score_tolerance``; the file is smaller than float32's.

    Measured (2026-12, TF 2.21, ai-edge-litert 2.3.0): float16 58/60, int8-dynamic 35/60.
    This random-weight ResNet without normalization amplifies weight rounding: float16
    keeps every score within 0.01 of Keras but moves some boxes (IoU 0.73-0.99 with
    Keras's); float32 matches to 1 px (test above)."""
    path = export(narrow, precision, tmp_path)
    got = run_litert(path, {"images": square_images}, tmp_path)["images"]
    found = total = 0
    for index, want in enumerate(keras_detections):
        count = int(got["num_detections"][index])
        assert count > 0
        iou = box_iou(want["boxes"], got["detection_boxes"][index, :count])
        same = want["classes"][:, None] == got["detection_classes"][index, :count][None, :]
        close = (
            np.abs(want["scores"][:, None] - got["detection_scores"][index, :count][None, :])
            <= score_tolerance
        )
        found += int(np.sum(np.any((iou >= 0.5) & same & close, axis=1)))
        total += len(want["scores"])
    print(f"{precision}: {found}/{total} Keras detections matched")
    assert found >= matched * total
    assert path.stat().st_size < 0.6 * float32_path.stat().st_size


def test_op_without_builtin_fails_naming_it(narrow, tmp_path, monkeypatch):
    """Traced with TensorFlow's fused NMS (no LiteRT builtin), the export fails and the
    message names the op; nothing is written."""
    import contextlib

    from kmask.export import export_tflite, tflite_exporter

    monkeypatch.setattr(
        tflite_exporter, "nms_implementation", lambda name: contextlib.nullcontext()
    )
    model, config = narrow
    with pytest.raises(ValueError, match="(?s)builtin ops only failed.*CombinedNonMaxSuppression"):
        export_tflite(model, tmp_path / "m.tflite", config.data, CATEGORIES)
    assert not list(tmp_path.iterdir())


def test_output_path_checked_before_conversion(narrow, tmp_path, monkeypatch):
    from kmask.export import TfliteExporter, export_tflite

    def never(self):
        raise AssertionError("converted before the output path was checked")

    monkeypatch.setattr(TfliteExporter, "convert", never)
    model, config = narrow
    existing = tmp_path / "model.tflite"
    existing.write_bytes(b"old")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    (tmp_path / "folder.tflite").mkdir()
    for path, error, message in (
        (existing, FileExistsError, "model.tflite already exists"),
        (tmp_path / "folder.tflite", IsADirectoryError, "give the .tflite file to write"),
        (a_file / "model.tflite", NotADirectoryError, "notes.txt is a file, not a folder"),
    ):
        with pytest.raises(error, match=message):
            export_tflite(model, path, config.data, CATEGORIES)
    assert existing.read_bytes() == b"old" and a_file.read_text() == "keep"
    for kwargs, message in (
        ({"precision": "int4"}, "precision must be one of"),
        ({"input_size": (64, 0)}, "input_size must be"),
        ({"input_size": (64,)}, "input_size must be"),
    ):
        with pytest.raises(ValueError, match=message):
            export_tflite(model, tmp_path / "new.tflite", config.data, **kwargs)


def test_cli_exports_int8_and_lists_ops(narrow, tmp_path):
    """``kmask export --format tflite --precision int8-dynamic --input-size 64`` on a run
    directory writes OUT/model.tflite and prints the builtin ops it uses."""
    from kmask.export.tflite_exporter import model_ops
    from tests.cli_runner import assert_ok, run_kmask
    from tests.export.conftest import write_run_directory

    model, config = narrow
    run = write_run_directory(tmp_path / "run", model, config)
    out = tmp_path / "exports"
    stdout = assert_ok(
        run_kmask(
            "export",
            "--run",
            str(run),
            "--format",
            "tflite",
            "--precision",
            "int8-dynamic",
            "--input-size",
            "64",
            "--out",
            str(out),
            cwd=tmp_path,
        )
    )
    path = out / "model.tflite"
    assert f"to {path}" in stdout
    listed = stdout.split("LiteRT builtin ops (")[1].split(": ", 1)[1].split()
    assert listed == model_ops(path.read_bytes())
    assert "NON_MAX_SUPPRESSION_V5" in listed and "CONV_2D" in listed
    assert not [op for op in listed if op.startswith("CUSTOM")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--format", "tflite", "--precision", "bfloat16"], "--precision bfloat16 does not"),
        (["--precision", "int8-dynamic"], "--precision int8-dynamic applies to --format tflite"),
        (["--format", "onnx", "--input-size", "64"], "--input-size applies to --format tflite"),
        (["--format", "tflite", "--input-size", "64x0"], "--input-size: expected SIZE or HxW"),
        (["--format", "tflite", "--max-batch-size", "2"], "--max-batch-size"),
    ],
)
def test_cli_refuses_bad_arguments(tmp_path, arguments, message):
    """Each refused before the model is loaded (the run directory does not exist), with a
    message naming the argument."""
    from tests.cli_runner import run_kmask

    result = run_kmask(
        "export",
        "--run",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "m"),
        *arguments,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr + result.stdout
