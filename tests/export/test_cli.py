"""``kmask export`` as a user runs it: a run directory in, a servable version folder out."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf

from tests.cli_runner import assert_ok, run_kmask
from tests.export.conftest import encode, shapes_image, write_run_directory


def test_export_run_directory_and_refuse_overwrite(model, config, tmp_path):
    run = write_run_directory(tmp_path / "run", model, config)
    out = tmp_path / "serving"
    stdout = assert_ok(
        run_kmask(
            "export",
            "--run",
            str(run),
            "--out",
            str(out),
            "--max-batch-size",
            "2",
            "--max-image-pixels",
            "5000",
            cwd=tmp_path,
        )
    )
    assert str(out / "1") in stdout
    assert (out / "1" / "saved_model.pb").is_file()
    assert (out / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    labels = json.loads((out / "1" / "assets" / "categories.json").read_text())
    assert [c["id"] for c in labels] == [3, 7, 11]

    serve = tf.saved_model.load(str(out / "1")).signatures["serving_default"]
    image = encode(shapes_image(50, 100, seed=0), "PNG")  # 5000 pixels: at the limit
    assert serve(image_bytes=tf.constant([image] * 2))["num_detections"].shape == (2,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 images .* max_batch_size=2 "):
        serve(image_bytes=tf.constant([image] * 3))
    wider = encode(shapes_image(50, 101, seed=0), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="5050 pixels, .* max_image_pixels"):
        serve(image_bytes=tf.constant([wider]))

    again = run_kmask(
        "export", "--run", str(run), "--out", str(out), "--version", "1", cwd=tmp_path
    )
    assert again.returncode == 2
    assert f"kmask export: error: {out / '1'} already exists" in again.stderr
    assert "--overwrite" in again.stderr

    missing = run_kmask("export", "--run", str(tmp_path / "nope"), "--out", str(out), cwd=tmp_path)
    assert missing.returncode == 2
    assert str(tmp_path / "nope") in missing.stderr

    bad = run_kmask("export", "--run", str(run), "--out", str(out), "--version", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--version" in bad.stderr
    assert sorted(p.name for p in out.iterdir()) == ["1"]


def test_output_checked_before_the_model_is_loaded(model, config, tmp_path, monkeypatch, capsys):
    """An ``--out`` that cannot be written, or options that do not apply, are refused
    before the checkpoint is loaded, let alone converted: loading, converting and exporting
    fail the test here."""
    from kmask import cli
    from kmask.export import OnnxExporter, SavedModelExporter
    from kmask.runs import InferenceSource

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded or converted before the --out check")

    run = write_run_directory(tmp_path / "run", model, config)
    monkeypatch.setattr(InferenceSource, "load_model", never)
    monkeypatch.setattr(OnnxExporter, "convert", never)
    monkeypatch.setattr(SavedModelExporter, "export", never)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"old")
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    onnx = ["--format", "onnx"]
    cases = [
        ([*onnx, "--out", str(a_file)], f"{a_file} is a file, not a folder"),
        ([*onnx, "--out", str(a_file / "sub" / "m.onnx")], f"{a_file} is a file, not a folder"),
        ([*onnx, "--out", str(existing)], f"{existing} already exists"),
        ([*onnx, "--out", str(folder)], f"{folder} is a folder"),
        ([*onnx, "--out", str(tmp_path / "m.onnx"), "--max-batch-size", "4"], "saved_model"),
        (["--out", str(a_file)], f"export directory {a_file} exists and is not a directory"),
        (["--out", str(tmp_path / "sm"), "--max-image-pixels", "0"], "--max-image-pixels must"),
    ]
    for options, message in cases:
        assert cli.main(["export", "--run", str(run), *options]) == 2, options
        assert message in capsys.readouterr().err, options
    assert a_file.read_text() == "keep" and existing.read_bytes() == b"old"


def test_help_states_the_limits_defaults(capsys):
    from kmask.cli import build_parser
    from kmask.export.saved_model_exporter import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"refused (default {DEFAULT_MAX_BATCH_SIZE})" in text
    assert f"refused (default {DEFAULT_MAX_IMAGE_PIXELS})" in text


def test_onnx_export_without_the_custom_op_fails_in_one_line(model, config, tmp_path, monkeypatch):
    """No compiler and no cached op: one line naming the cause and the fix, before the
    model is loaded, and no file."""
    run = write_run_directory(tmp_path / "run", model, config)
    monkeypatch.setenv("KMASK_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv("KMASK_BUILD_CUDA", "0")
    out = tmp_path / "model.onnx"
    result = run_kmask(
        "export", "--run", str(run), "--format", "onnx", "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "kmask export: error: the ONNX export needs the RoIAlign custom op"
    ), lines[0]
    assert "/nonexistent/c++" in lines[0]
    assert not out.exists()
