"""Keypoint metadata is checked when the data is read. Malformed ``keypoints``,
``skeleton``, ``flip_map`` or ``keypoint_sigmas`` of a category, and keypoint lists that do
not fit their category, make ``kmask convert-coco`` fail naming the file, the category and
the field, with nothing written; the shard reader checks its ``categories.json`` the same
way; ``kmask train`` refuses data whose keypoint count is not
``model.keypoint_head.num_keypoints``, before it writes anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

from kmask.cli import main
from kmask.data import DataError, open_dataset
from kmask.data.stick_figures_dataset import (
    KEYPOINT_NAMES,
    KEYPOINT_SIGMAS,
    SKELETON,
    StickFiguresDataset,
)
from tests.cli_runner import CONFIGS

# The stick figures' person category with 10 of its 11 keypoints.
TEN_KEYPOINTS = {
    "keypoints": list(KEYPOINT_NAMES[:10]),
    "skeleton": [list(edge) for edge in SKELETON if max(edge) <= 10],
    "keypoint_sigmas": list(KEYPOINT_SIGMAS[:10]),
}
NO_KEYPOINTS = {"keypoints": None, "skeleton": None, "keypoint_sigmas": None}

# (changes to the person category, None = key removed; what the error says after
# "<file>: category 'person' (id 1)" or "<file>: annotation id N")
BAD_CATEGORIES = [
    ({"keypoints": 5}, ": 'keypoints' must be a list of keypoint names, got 5"),
    ({"keypoints": "head"}, ": 'keypoints' must be a list of keypoint names, got 'head'"),
    ({"keypoints": None}, ": 'skeleton' but no 'keypoints' names"),
    (
        {"skeleton": [[1, 2, 3]]},
        ": 'skeleton'[0] [1, 2, 3] is not a pair of keypoint numbers in 1..11",
    ),
    (
        {"skeleton": [["head", "left_shoulder"]]},
        ": 'skeleton'[0] ['head', 'left_shoulder'] is not a pair of keypoint numbers",
    ),
    ({"skeleton": [[1, 2], [11, 12]]}, ": 'skeleton'[1] [11, 12] is not a pair"),
    ({"flip_map": [["left_knee"]]}, ": 'flip_map'[0] ['left_knee'] is not a pair of names"),
    ({"flip_map": [["left_knee", "knee"]]}, ": 'flip_map'[0] ['left_knee', 'knee'] is not"),
    ({"flip_map": "left_knee"}, ": 'flip_map' must be a list, got 'left_knee'"),
    ({"keypoint_sigmas": [0.1] * 10}, ": 'keypoint_sigmas' must be 11 positive numbers"),
    (NO_KEYPOINTS, ": labelled 'keypoints', but its category 'person' (id 1) has no"),
    (TEN_KEYPOINTS, ": 'keypoints' holds 33 numbers, but its category 'person' (id 1) names 10"),
]


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Two 64 px stick-figure images: (their folder, the COCO dict of train.json)."""
    root = tmp_path_factory.mktemp("figures")
    paths = StickFiguresDataset(64, seed=0).write(root, 2, 0, progress=False)
    return root, json.loads(paths["train"].read_text())


def _with_category(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``changes`` applied to its one category (None removes a key)."""
    (category,) = data["categories"]
    category = {**category, **changes}
    return {**data, "categories": [{k: v for k, v in category.items() if v is not None}]}


def _error_line(err: str, command: str) -> str:
    """The one ``kmask COMMAND: error: ...`` line of ``err`` (which holds no traceback)."""
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith(f"kmask {command}: error:")]
    return line


@pytest.mark.parametrize(("changes", "message"), BAD_CATEGORIES)
def test_convert_coco_names_the_file_the_category_and_the_field(
    figures, tmp_path, capsys, changes, message
):
    root, data = figures
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_with_category(data, changes)))
    out = tmp_path / "shards"
    argv = ["convert-coco", "--json", str(path), "--images", str(root), "--out", str(out)]
    assert main(argv) == 1
    line = _error_line(capsys.readouterr().err, "convert-coco")
    assert line.startswith(f"kmask convert-coco: error: {path}: ")
    assert "category 'person' (id 1)" in line and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keypoints": "head"}, "'keypoints' must be a list of keypoint names, got 'head'"),
        ({"skeleton": [[1, 12]]}, "'skeleton'[0] [1, 12] is not a pair of keypoint numbers"),
    ],
)
def test_shard_categories_are_checked_when_opened(figures, tmp_path, changes, message):
    _, data = figures
    with tf.io.TFRecordWriter(str(tmp_path / "figures-00000-of-00001.tfrecord")):
        pass
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps(_with_category(data, changes)["categories"]))
    with pytest.raises(DataError) as error:
        open_dataset(tfrecord_pattern=str(tmp_path / "figures-*.tfrecord"))
    assert str(error.value).startswith(f"{categories}: category 'person' (id 1): {message}")


@pytest.mark.parametrize(
    ("changes", "keypoints", "found"),
    [
        (TEN_KEYPOINTS, 30, f"has 10 keypoints {list(KEYPOINT_NAMES[:10])}"),
        (NO_KEYPOINTS, 0, "has 0 keypoints []"),
    ],
)
def test_train_refuses_data_with_another_number_of_keypoints(
    figures, tmp_path, capsys, changes, keypoints, found
):
    """The keypoint count of the data must be the model's (11 in keypoints_tiny.yaml), as
    the class count must be ``model.num_classes``."""
    root, data = figures
    data = _with_category(data, changes)
    for annotation in data["annotations"]:
        annotation["keypoints"] = annotation["keypoints"][:keypoints]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    run = tmp_path / "run"
    argv = ["train", "--config", str(CONFIGS / "keypoints_tiny.yaml"), "--out", str(run)]
    argv += ["--train-json", str(path), "--train-images", str(root)]
    argv += ["--val-json", str(path), "--val-images", str(root), "--set"]
    assert main([*argv, "train.max_steps=1"]) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert f"model.keypoint_head.num_keypoints is 11 but the training data ({path}) {found}" in line
    assert not (run / "config.yaml").exists() and not (run / "categories.json").exists()
    assert not (run / "checkpoints").exists()
