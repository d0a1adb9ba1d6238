"""A run directory's ``categories.json`` is checked when ``kmask predict``, ``evaluate`` and
``export`` read it: malformed keypoint metadata, or another number of classes or keypoints
than the model's, fail naming that file before the model is loaded, and nothing is
written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kmask.cli import main
from kmask.data.stick_figures_dataset import KEYPOINT_NAMES
from kmask.training import RunDirectory
from tests.toy_data import tiny_config

PERSON = {"id": 1, "name": "person", "keypoints": list(KEYPOINT_NAMES), "skeleton": [[1, 2]]}
CATEGORIES = [PERSON, {"id": 2, "name": "car"}, {"id": 3, "name": "dog"}]

# (the run's categories.json, what the error says after "<file>: ")
BAD_CATEGORIES = [
    (CATEGORIES[:2], "2 categories but the model has model.num_classes=3"),
    (
        [{**PERSON, "keypoints": 5}, *CATEGORIES[1:]],
        "category 'person' (id 1): 'keypoints' must be a list of keypoint names, got 5",
    ),
    (
        [{**PERSON, "skeleton": [[1, 12]]}, *CATEGORIES[1:]],
        "category 'person' (id 1): 'skeleton'[0] [1, 12] is not a pair of keypoint numbers",
    ),
    (
        [{**PERSON, "keypoints": list(KEYPOINT_NAMES[:10])}, *CATEGORIES[1:]],
        "10 keypoint names but the model predicts model.keypoint_head.num_keypoints=11",
    ),
]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """The run directory of a 3-class model with an 11-keypoint head, an image to predict
    and an evaluation JSON with the model's categories. The checkpoint is a placeholder:
    categories.json is checked before it is read."""
    directory = RunDirectory(tmp_path / "run")
    directory.write_config(tiny_config(tmp_path, "model.keypoint_head={num_keypoints: 11}"))
    directory.checkpoints_dir.mkdir()
    (directory.checkpoints_dir / "ckpt-00000001.weights.h5").write_bytes(b"placeholder")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "picture.png")
    val = {"images": [], "annotations": [], "categories": CATEGORIES}
    (tmp_path / "val.json").write_text(json.dumps(val))
    return directory.path


def _argv(command: str, run: Path) -> list[str]:
    root = run.parent
    if command == "predict":
        return ["predict", "--run", str(run), str(root / "picture.png"), "--out", str(root / "p")]
    if command == "evaluate":
        return ["evaluate", "--run", str(run), "--json", str(root / "val.json"), "--images", "."]
    return ["export", "--run", str(run), "--out", str(root / "export")]


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
@pytest.mark.parametrize(("categories", "message"), BAD_CATEGORIES)
def test_a_bad_categories_json_is_named_and_nothing_written(
    run, capsys, command: str, categories: list[dict[str, Any]], message: str
):
    path = run / "categories.json"
    path.write_text(json.dumps(categories))
    before = _files(run.parent)
    assert main(_argv(command, run)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith(f"kmask {command}: error:")]
    assert line.startswith(f"kmask {command}: error: {path}: {message}")
    assert _files(run.parent) == before
