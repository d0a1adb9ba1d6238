"""ONNX export: ONNX Runtime, in a process without TensorFlow, gives the Keras model's
detections; RoIAlign and NMS are the ONNX ops; dynamic batch and size; zero detections."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kmask.evaluation import Predictor
from kmask.export.inference_graph import with_roi_align
from kmask.ops.roi_align import resolve_implementation
from tests.export.conftest import (
    CATEGORIES,
    assert_same_detections,
    reference,
    resnet_c4_model,
    shapes_image,
)

onnx = pytest.importorskip("onnx", reason="onnx is not installed (extra [onnx])")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (extra [onnx])")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (extra [onnx])")

RUN_ONNXRUNTIME = Path(__file__).with_name("run_onnxruntime.py")


def zero_detection_model(model: keras.Model, config, blank: np.ndarray, others) -> keras.Model:
    """A copy of ``model`` with a 10x softer classifier whose background logit is raised just
    enough that ``blank`` gets no detection while each of ``others`` keeps some (bisection on
    the bias)."""
    copy = with_roi_align(model, "auto")
    cls_score = copy.roi_heads.box_head.cls_score
    kernel, bias = cls_score.get_weights()
    # The session model's classifier is sharpened 300x for varied classes; 30x here keeps
    # float32 differences between the runtimes (amplified by the logit scale) below 1e-4.
    kernel = kernel / 10.0

    predictor = Predictor(copy, config.data)
    features = [predictor.features_for_image(image) for image in [blank, *others]]

    def counts(shift: float) -> list[int]:
        shifted = bias.copy()
        shifted[0] += shift
        cls_score.set_weights([kernel, shifted])
        return [int(predictor.predict_batch(f)["num_detections"][0]) for f in features]

    low, high = 0.0, 64.0
    for _ in range(10):
        middle = (low + high) / 2
        low, high = (low, middle) if counts(middle)[0] == 0 else (middle, high)
    found = counts(high + 0.05)
    assert found[0] == 0 and min(found[1:]) > 0, f"no bias separates the images: {found}"
    return copy


@pytest.fixture(scope="module")
def cases(model, config, decoded_images) -> dict[str, np.ndarray]:
    """uint8 batches: two images of one size, one landscape image, a blank image."""
    if resolve_implementation("auto") != "custom":
        pytest.skip("the ONNX export traces the RoIAlign custom op; run `kmask build-ops`")
    second = shapes_image(*decoded_images[0].shape[:2], seed=11)
    return {
        "pair": np.stack([decoded_images[0], second]),
        "landscape": decoded_images[1][None],
        "blank": np.full((1, 60, 80, 3), 127, np.uint8),
    }


@pytest.fixture(scope="module")
def onnx_export(model, config, cases, tmp_path_factory) -> tuple[Path, keras.Model]:
    from kmask.export import export_onnx

    exported = zero_detection_model(model, config, cases["blank"][0], list(cases["pair"]))
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(exported, path, config.data, CATEGORIES), exported


def test_graph_uses_onnx_roialign_and_nms(onnx_export):
    # Written as every other output: read-write for the owner, readable by all (umask).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(onnx_export[0].stat().st_mode) == 0o666 & ~umask
    model = onnx.load(str(onnx_export[0]))
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    assert "NonMaxSuppression" in ops
    roi_aligns = [node for node in model.graph.node if node.op_type == "RoiAlign"]
    assert roi_aligns  # one per pyramid level and head
    for node in roi_aligns:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["coordinate_transformation_mode"] == b"half_pixel"  # aligned
        assert attributes["mode"] == b"avg"
    (image_input,) = model.graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [0, 0, 0, 3]  # dynamic batch, height, width


def run_onnxruntime(path: Path, cases: dict[str, np.ndarray], folder: Path) -> dict:
    """``{case: {output: array}}`` of the ONNX model at ``path`` on each batch of ``cases``,
    run by ONNX Runtime in a process without TensorFlow (``run_onnxruntime.py``)."""
    np.savez(folder / "inputs.npz", **cases)
    result = subprocess.run(
        [sys.executable, "-I", str(RUN_ONNXRUNTIME), str(path), "inputs.npz", "out.npz"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    served = {name: {} for name in cases}
    for key, value in np.load(folder / "out.npz").items():
        name, output = key.split("/", 1)
        served[name][output] = value
    return served


def test_onnxruntime_without_tensorflow_matches_keras(onnx_export, config, cases, tmp_path):
    path, exported = onnx_export
    served = run_onnxruntime(path, cases, tmp_path)
    for name, batch in cases.items():
        got = served[name]
        # Each image against itself alone (the pair: two images in one batch).
        want = [reference(exported, config, [image])[0] for image in batch]
        for index, expected in enumerate(want):
            assert_same_detections(got, index, expected)
        np.testing.assert_array_equal(got["original_size"], [b.shape[:2] for b in batch])
    assert served["blank"]["num_detections"].tolist() == [0]
    assert served["pair"]["num_detections"].min() > 0


def test_empty_batch_gives_empty_outputs(onnx_export, cases, tmp_path):
    """A batch of 0 images: every output with 0 rows and the shape of a batch of 1's."""
    served = run_onnxruntime(
        onnx_export[0],
        {"empty": np.zeros((0, 60, 80, 3), np.uint8), "one": cases["landscape"]},
        tmp_path,
    )
    assert served["empty"].keys() == served["one"].keys()
    for name, value in served["empty"].items():
        assert value.shape == (0, *served["one"][name].shape[1:]), name


def test_output_path_checked_before_conversion(model, config, tmp_path, monkeypatch):
    """A path the export could not write is refused before the (slow) conversion."""
    from kmask.export import OnnxExporter, export_onnx

    def never(self):
        raise AssertionError("converted before the output path was checked")

    monkeypatch.setattr(OnnxExporter, "convert", never)
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"old")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    (tmp_path / "folder.onnx").mkdir()
    for path, error, message in (
        (existing, FileExistsError, "model.onnx already exists"),
        (tmp_path / "folder.onnx", IsADirectoryError, "folder.onnx is a folder"),
        (a_file / "model.onnx", NotADirectoryError, "notes.txt is a file, not a folder"),
        (a_file / "sub" / "model.onnx", NotADirectoryError, "notes.txt is a file, not a folder"),
    ):
        with pytest.raises(error, match=message):
            export_onnx(model, path, config.data, CATEGORIES)
    assert existing.read_bytes() == b"old" and a_file.read_text() == "keep"


@pytest.mark.slow
def test_resnet_c4_model(images, tmp_path):
    """A ResNet-C4 Mask R-CNN (one RoIAlign level, conv5 per RoI) runs in ONNX Runtime
    with the Keras model's detections."""
    from kmask.export import export_onnx

    model, config = resnet_c4_model(tmp_path)
    path = export_onnx(model, tmp_path / "c4.onnx", config.data, CATEGORIES)
    got = run_onnxruntime(path, {"one": images[3][None]}, tmp_path)["one"]
    want = reference(model, config, [images[3]])[0]
    assert len(want["scores"]) > 0
    assert_same_detections(got, 0, want)
