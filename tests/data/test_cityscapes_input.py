"""``kmask convert-cityscapes`` refuses input it would misread or crash on: an 8-bit
instanceIds PNG, a malformed polygons JSON, a path that is not UTF-8. The error names the
file and nothing is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmask.cli import main

HEIGHT, WIDTH = 16, 32
STEM = "aachen_000000_000019"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A Cityscapes tree with one val image of two cars (instances 26000 and 26001)."""
    root = tmp_path / "cityscapes"
    for top in ("leftImg8bit", "gtFine"):
        (root / top / "val" / "aachen").mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "leftImg8bit/val/aachen" / f"{STEM}_leftImg8bit.png")
    ids = np.full((HEIGHT, WIDTH), 7, np.uint16)  # road
    ids[2:8, 2:10], ids[8:14, 20:30] = 26000, 26001
    Image.fromarray(ids).save(_gt(root, "instanceIds.png"))
    car = {"label": "car", "polygon": [[0, 0], [1, 0], [1, 1]]}
    polygons = {"imgHeight": HEIGHT, "imgWidth": WIDTH, "objects": [car, car]}
    _gt(root, "polygons.json").write_text(json.dumps(polygons))
    return root


def _gt(root: Path, suffix: str) -> Path:
    return root / "gtFine/val/aachen" / f"{STEM}_gtFine_{suffix}"


def _convert(root: Path, capsys: pytest.CaptureFixture, *more: str) -> str:
    """Runs the command, which must fail; returns its one error line."""
    out = root.parent / "out"
    assert main(["convert-cityscapes", "--root", str(root), "--out", str(out), *more]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "kmask convert-cityscapes: error:" in line]
    assert os.listdir(root.parent) == ["cityscapes"]  # nothing written, nothing left over
    return line


def test_the_16_bit_fixture_converts_to_two_cars(root, tmp_path):
    out = tmp_path / "out"
    assert (
        main(["convert-cityscapes", "--root", str(root), "--out", str(out), "--splits", "val"]) == 0
    )
    annotations = json.loads((out / "instances_val.json").read_text())["annotations"]
    assert [(a["category_id"], a["iscrowd"], a["area"]) for a in annotations] == [
        (3, 0, 48),
        (3, 0, 60),
    ]


def test_an_8_bit_id_png_is_refused(root, capsys):
    """Two cars written as their label id 26 into an 8-bit PNG read as one crowd region."""
    ids = np.full((HEIGHT, WIDTH), 7, np.uint8)
    ids[2:8, 2:10], ids[8:14, 20:30] = 26, 26
    Image.fromarray(ids).save(_gt(root, "instanceIds.png"))
    _gt(root, "polygons.json").unlink()
    line = _convert(root, capsys, "--splits", "val")
    assert f"error: {_gt(root, 'instanceIds.png')}: an 8-bit PNG (mode L)" in line
    assert "instance ids (label id * 1000 + index) need 16 or 32 bits" in line


@pytest.mark.parametrize(
    ("text", "old", "new", "message"),
    [
        ("objects", '"objects": [', '"objects": [[1, 2], ', "objects[0] [1, 2] is not an object"),
        ("imgHeight", f'"imgHeight": {HEIGHT}', '"imgHeight": Infinity', "'imgHeight' must be"),
        ("imgWidth", f'"imgWidth": {WIDTH}', '"imgWidth": "32"', "'imgWidth' must be a positive"),
    ],
)
def test_a_malformed_polygons_json_is_refused(root, capsys, text, old, new, message):
    polygons = _gt(root, "polygons.json")
    original = polygons.read_text()
    assert old in original, text
    polygons.write_text(original.replace(old, new))
    line = _convert(root, capsys, "--splits", "val")
    assert f"error: {polygons}: {message}" in line


def test_a_path_that_is_not_utf8_is_refused(root, capsys):
    for top in ("leftImg8bit", "gtFine"):
        os.rename(root / top / "val" / "aachen", os.fsencode(root / top / "val") + b"/aach\xffen")
    line = _convert(root, capsys, "--splits", "val", "--shards")
    image = f"{root}/leftImg8bit/val/aach\\xffen/{STEM}_leftImg8bit.png"
    assert f"error: {image}: the file name is not UTF-8" in line
