"""Every COCO field a user supplies is checked at load time: a counted skip naming the file,
the image id and the annotation id, or (strict) a DataError with the same names. The
crash cases (pycocotools segfaults, uninitialized masks) run ``kmask convert-coco`` in a
subprocess, which must exit normally."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from kmask.data import CategoryMap, COCODataset, DataError
from kmask.data.coco_fields import decode_rle_string
from tests.cli_runner import run_kmask
from tests.toy_data import compressed_rle, png_bytes, random_image, write_coco

H, W = 24, 32
_MASK = np.zeros((H, W), np.uint8)
_MASK[4:10, 5:20] = 1
_GOOD_RLE = compressed_rle(_MASK)


def _annotation(annotation_id: int, **fields) -> dict:
    base = {"id": annotation_id, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 8]}
    return {**base, **fields}


# (reason counted, fields of the bad annotation)
BAD_ANNOTATIONS = [
    ("invalid polygon", {"segmentation": [[1e9, 1, 1e9, 5, 3, 1e9]]}),
    ("invalid polygon", {"segmentation": [[1, 1, "5", 1, 5, 5]]}),
    ("invalid RLE", {"segmentation": {"size": [H, W], "counts": [H * W - 5, 3]}}),
    ("invalid RLE", {"segmentation": {"size": [H, W], "counts": [H * W + 9, 3]}}),
    ("invalid RLE", {"segmentation": {"size": [H, W], "counts": [-4, H * W + 4]}}),
    ("invalid RLE", {"segmentation": {"size": [H, W], "counts": "\x7f\x7f~~~"}}),
    ("invalid RLE", {"segmentation": {"size": [H, W], "counts": _GOOD_RLE["counts"][:-2]}}),
    ("invalid RLE", {"segmentation": {"size": [str(H), str(W)], "counts": [H * W]}}),
    ("invalid RLE", {"segmentation": {"size": [H, W], "counts": "0l"}, "iscrowd": 1}),
    ("invalid segmentation", {"segmentation": "polygon"}),
    ("invalid area", {"area": None}),
    ("invalid area", {"area": "12"}),
    ("invalid category id", {"category_id": "7"}),
    ("invalid category id", {"category_id": None}),
    ("invalid category id", {"category_id": 7.5}),
    ("invalid category id", {"category_id": 2**63}),
    ("invalid iscrowd", {"iscrowd": "0"}),
    ("invalid keypoints", {"category_id": 1, "keypoints": ["1"] * 51}),
    ("invalid keypoints", {"category_id": 1, "keypoints": [1, 1, 7] * 17}),
    ("invalid box", {"bbox": "1234"}),
    ("invalid annotation id", {"id": "x"}),
]


def _write(tmp_path, annotations: list[dict], images: list[dict] | None = None):
    """The JSON with ``images`` (default one image); only image 1's file is written."""
    rng = np.random.default_rng(0)
    entries = images or [{"id": 1, "file_name": "one.png", "height": H, "width": W}]
    files = [
        (entry, png_bytes(random_image(rng, H, W)) if entry["id"] == 1 else None)
        for entry in entries
    ]
    return write_coco(tmp_path, files, annotations)


@pytest.mark.parametrize(("reason", "fields"), BAD_ANNOTATIONS)
def test_bad_annotation_is_a_named_skip_or_a_strict_error(tmp_path, reason, fields):
    good = _annotation(1, segmentation=_GOOD_RLE)
    path = _write(tmp_path, [good, _annotation(99, **fields)])
    dataset = COCODataset(path, tmp_path / "images")
    assert dataset.report.skipped == {reason: 1}
    assert len(dataset.records[0].boxes) == 1  # the good annotation is kept
    with pytest.raises(DataError, match=reason) as error:
        COCODataset(path, tmp_path / "images", strict=True)
    message = str(error.value)
    assert str(path) in message and "image id 1" in message and "one.png" in message
    assert "annotation id 99" in message or "annotation id 'x'" in message


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": -1}, "invalid image id"),
        ({"id": 2**63}, "invalid image id"),
        ({"id": "5"}, "invalid image id"),
        ({"height": math.inf}, "invalid image size"),
        ({"height": "24"}, "invalid image size"),
        ({"width": 0}, "invalid image size"),
        ({"file_name": None}, "invalid file_name"),
        ({"file_name": "../one.png"}, "file_name outside the images folder"),
        ({"file_name": "/etc/passwd"}, "file_name outside the images folder"),
    ],
)
def test_bad_image_entry_is_skipped_with_its_annotations(tmp_path, fields, reason):
    images = [
        {"id": 1, "file_name": "one.png", "height": H, "width": W},
        {"id": 2, "file_name": "two.png", "height": H, "width": W, **fields},
    ]
    annotations = [_annotation(1), _annotation(2, image_id=fields.get("id", 2))]
    path = _write(tmp_path, annotations, images)
    dataset = COCODataset(path, tmp_path / "images")
    assert dataset.image_ids == (1,)
    assert dataset.report.skipped[reason] == 1
    with pytest.raises(DataError, match=reason) as error:
        COCODataset(path, tmp_path / "images", strict=True)
    assert str(path) in str(error.value)


def test_file_names_outside_the_folder_only_when_allowed(tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes(random_image(np.random.default_rng(1), H, W)))
    images = [{"id": 1, "file_name": "../elsewhere.png", "height": H, "width": W}]
    path = _write(tmp_path, [_annotation(1)], images)
    assert len(COCODataset(path, tmp_path / "images")) == 0
    allowed = COCODataset(path, tmp_path / "images", allow_outside_images=True)
    assert allowed.load(0) is not None


def test_category_ids_must_be_integers():
    for bad in ("3", None, 2.5, 2**63, -1):
        with pytest.raises(DataError, match=r"categories\[0\]: id"):
            CategoryMap([{"id": bad, "name": "x"}], source="cats.json")


def test_rle_strings_decode_like_pycocotools():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = (rng.random((17, 23)) > rng.random()).astype(np.uint8)
        runs = decode_rle_string(compressed_rle(mask)["counts"])
        flat = np.concatenate([np.full(n, i % 2, np.uint8) for i, n in enumerate(runs)])
        np.testing.assert_array_equal(flat, mask.flatten(order="F"))


def test_convert_coco_survives_every_bad_annotation(tmp_path):
    """The pycocotools crash cases through the CLI, in a subprocess that must exit 0."""
    annotations = [_annotation(1, segmentation=_GOOD_RLE)]
    annotations += [_annotation(100 + i, **fields) for i, (_, fields) in enumerate(BAD_ANNOTATIONS)]
    path = _write(tmp_path, annotations)
    result = run_kmask(
        "convert-coco",
        "--json",
        str(path),
        "--images",
        str(tmp_path / "images"),
        "--out",
        str(tmp_path / "shards"),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 instances" in result.stdout
    for reason, count in collections.Counter(r for r, _ in BAD_ANNOTATIONS).items():
        assert f"skipped {count} x {reason}" in result.stdout
    strict = run_kmask(
        "convert-coco",
        "--json",
        str(path),
        "--images",
        str(tmp_path / "images"),
        "--out",
        str(tmp_path / "strict"),
        "--strict",
        cwd=tmp_path,
        timeout=300,
    )
    assert strict.returncode == 1
    assert "annotation id 100" in strict.stderr and "Traceback" not in strict.stderr
    assert not list((tmp_path / "strict").glob("*.tfrecord*"))
