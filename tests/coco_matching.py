"""Comparing two lists of COCO results (``kmask predict``'s detections.json and
``ImageDetections.to_coco``) up to float32 noise: the same detections in the same order,
boxes within 0.01 px, scores within 1e-4, masks with IoU >= 0.99, other fields equal.

Images of the same padded size share a batch in ``Detector.detect`` and run alone in
``kmask predict``; the batch size changes how a few float32 sums are blocked (relative
differences near 1e-5 after the whole network), not which detections come out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from tests.cli_runner import assert_ok, run_kmask

_CLOSE = ("bbox", "score", "segmentation")


def assert_same_results(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected) > 0
    for mine, theirs in zip(got, expected):
        assert {k: v for k, v in mine.items() if k not in _CLOSE} == {
            k: v for k, v in theirs.items() if k not in _CLOSE
        }
        np.testing.assert_allclose(mine["bbox"], theirs["bbox"], atol=1e-2)
        assert abs(mine["score"] - theirs["score"]) <= 1e-4
        if "segmentation" in theirs:
            rles = [
                {**r, "counts": r["counts"].encode()}
                for r in (mine["segmentation"], theirs["segmentation"])
            ]
            if mask_utils.area(rles).max() > 0:
                assert mask_utils.iou(rles[:1], rles[1:], [False])[0, 0] >= 0.99


def assert_same_picture(drawn: np.ndarray, written: np.ndarray) -> None:
    """The same picture but for a few pixels on mask borders (at most 0.5 %)."""
    assert drawn.shape == written.shape
    assert np.any(drawn != written, axis=-1).mean() <= 0.005


def predict_json(
    run: Path, paths: Sequence[Path], out: Path, threshold: float, cwd: Path
) -> list[dict[str, Any]]:
    """``kmask predict --run RUN PATHS --out OUT --score-threshold T``'s detections.json."""
    assert_ok(
        run_kmask(
            "predict", "--run", str(run), *map(str, paths), "--out", str(out),
            "--score-threshold", str(threshold), cwd=cwd,
        )
    )  # fmt: skip
    return json.loads((out / "detections.json").read_text())


def as_written(results: Sequence[Any], file_names: Sequence[str]) -> list[dict[str, Any]]:
    """What ``kmask predict`` writes to detections.json for these ``ImageDetections``:
    each image's ``to_coco`` (``image_id`` its 1-based position) with ``file_name`` and
    ``category_name``."""
    return [
        {**coco, "file_name": name, "category_name": category}
        for position, (result, name) in enumerate(zip(results, file_names), start=1)
        for coco, category in zip(result.to_coco(position), result.class_names)
    ]
