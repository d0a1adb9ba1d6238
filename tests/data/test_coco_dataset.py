"""Reading COCO JSON: masks against pycocotools, categories, crowd, keypoints, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from kmask.config import DataConfig
from kmask.data import COCODataset, DataError
from kmask.data.image_io import decode_rgb
from tests.toy_data import jpeg_bytes, png_bytes, random_image, write_coco


def _by_id(dataset, image_id):
    index = dataset.image_ids.index(image_id)
    return dataset.records[index], dataset.load(index)


def test_masks_agree_with_pycocotools(mixed_coco):
    json_path, images_dir, _ = mixed_coco
    dataset = COCODataset(json_path, images_dir)
    coco = COCO(str(json_path))
    for record in dataset.records:
        masks = dataset.decode_masks(record)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record.image_id]))
        assert len(masks) == len(annotations)
        for mask, annotation in zip(masks, annotations):
            if annotation["segmentation"]:
                np.testing.assert_array_equal(mask, coco.annToMask(annotation))
            else:  # no segmentation: the box is the mask
                x, y, w, h = (int(v) for v in annotation["bbox"])
                expected = np.zeros_like(mask)
                expected[y : y + h, x : x + w] = 1
                np.testing.assert_array_equal(mask, expected)


def test_the_0_1_name_cocodataset_is_the_same_class(mixed_coco):
    from kmask.data import CocoDataset

    assert CocoDataset is COCODataset
    assert isinstance(CocoDataset(*mixed_coco[:2]), COCODataset)


def test_categories_contiguous_in_id_order(mixed_coco):
    dataset = COCODataset(*mixed_coco[:2])
    assert dataset.category_ids == (1, 3, 7)
    assert dataset.category_names == ("person", "car", "dog")
    assert dataset.num_classes == 3
    assert dataset.categories.to_original_id(2) == 7
    assert len(dataset.keypoint_names) == 17


def test_load_leaves_out_crowd_and_carries_keypoints(mixed_coco):
    json_path, images_dir, masks = mixed_coco
    dataset = COCODataset(json_path, images_dir)
    record, example = _by_id(dataset, 11)
    assert record.is_crowd.tolist() == [False, True, False]
    assert example["classes"].tolist() == [0, 2]  # person, dog; the crowd car is left out
    np.testing.assert_allclose(example["boxes"], [[4.25, 10.5, 32.25, 40.5], [2, 44, 11, 60]])
    assert example["masks"].shape == (2, 48, 64)
    keypoints = example["keypoints"]
    assert keypoints.shape == (2, 17, 3)
    # COCO (x, y) pixel indices -> continuous (x + .5, y + .5); unlabelled stay zero.
    np.testing.assert_allclose(keypoints[0, 1], [20.5, 10.5, 2])
    np.testing.assert_allclose(keypoints[0, 2], [25.5, 11.5, 1])
    assert not keypoints[0, 3:].any() and not keypoints[1].any()
    _, example = _by_id(dataset, 12)
    np.testing.assert_array_equal(example["masks"], np.stack([masks["rect"], masks["blob"]]))
    _, example = _by_id(dataset, 13)
    assert example["boxes"].shape == (0, 4) and example["masks"].shape == (0, 32, 32)


def test_images_without_annotations_dropped_for_training_only(mixed_coco):
    dataset = COCODataset(*mixed_coco[:2])
    ids = lambda ds: sorted(int(e["image_id"]) for e in ds.as_numpy_iterator())  # noqa: E731
    assert ids(dataset.examples(drop_empty=True)) == [11, 12]
    assert ids(dataset.examples()) == [11, 12, 13]
    config = DataConfig(min_size=(32,), max_size=64, gt_mask_size=8)
    train = dataset.build(config, training=True, batch_size=1)
    val = dataset.build(config, training=False, batch_size=1)
    assert sorted(int(f["image_id"][0]) for f, _ in train) == [11, 12]
    assert sorted(int(f["image_id"][0]) for f, _ in val) == [11, 12, 13]


# ----------------------------------------------------------------------------- bad input


def _image(image_id, name, height=24, width=32):
    return {"id": image_id, "file_name": name, "height": height, "width": width}


def _box_annotation(image_id, bbox, **extra):
    return {"image_id": image_id, "category_id": 7, "bbox": bbox, "iscrowd": 0, **extra}


def test_not_coco_json_names_the_missing_key(tmp_path):
    (tmp_path / "images").mkdir()
    for missing in ("images", "annotations", "categories"):
        data = {"images": [], "annotations": [], "categories": []}
        del data[missing]
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(data))
        with pytest.raises(DataError, match=f"no key '{missing}'") as error:
            COCODataset(path, tmp_path / "images")
        assert str(path) in str(error.value)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="not a COCO annotation file"):
        COCODataset(path, tmp_path / "images")
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        COCODataset(path, tmp_path / "images")
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match=r"images\[0\] has no key 'file_name'"):
        COCODataset(path, tmp_path / "images")


def test_bad_annotations_are_fixed_or_skipped_with_warnings(tmp_path, caplog):
    rng = np.random.default_rng(1)
    images = [(_image(1, "one.png"), png_bytes(random_image(rng, 24, 32)))]
    annotations = [
        _box_annotation(1, [-4, 2, 10, 6]),  # partly outside: clipped to x in [0, 6]
        _box_annotation(1, [40, 2, 5, 5]),  # wholly outside: dropped
        _box_annotation(1, [3, 3, 0, 5]),  # zero area: dropped
        _box_annotation(1, [3, 3, 5, 5], segmentation=[[3, 3, 8, 3]]),  # 2-point polygon
        _box_annotation(1, [3, 3, 5, 5], segmentation=[[3, 3, 8, 3], [3, 3, 8, 3, 8, 8]]),
        {"image_id": 1, "category_id": 99, "bbox": [1, 1, 4, 4]},  # unknown category
        _box_annotation(1, [1, 1, float("nan"), 4]),  # not a number
        _box_annotation(2, [1, 1, 4, 4]),  # unknown image id
    ]
    path = write_coco(tmp_path, images, annotations)
    with caplog.at_level(logging.WARNING, logger="kmask.data"):
        dataset = COCODataset(path, tmp_path / "images")
    record = dataset.records[0]
    np.testing.assert_allclose(record.boxes, [[2, 0, 8, 6], [3, 3, 8, 8]])
    assert dataset.report.skipped == {
        "box outside the image": 1,
        "zero-area box": 1,
        "polygon with fewer than 3 points": 1,
        "unknown category id": 1,
        "invalid box": 1,
        "annotation for an unknown image id": 1,
    }
    assert dataset.report.fixed == {
        "box clipped to the image": 1,
        "polygon part with fewer than 3 points removed": 1,
    }
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6
    assert all("image id" in m for m in messages)
    assert all("one.png" in m for m in messages if "unknown image id" not in m)
    assert "skipped 1 x zero-area box" in dataset.report.summary()
    with pytest.raises(DataError, match="strict"):
        COCODataset(path, tmp_path / "images", strict=True)


def test_bad_images_skipped_and_nothing_crashes_mid_epoch(tmp_path, caplog):
    rng = np.random.default_rng(2)
    good = random_image(rng, 24, 32)
    images = [
        (_image(1, "good.png"), png_bytes(good)),
        (_image(2, "missing.png"), None),
        (_image(3, "truncated.jpg"), jpeg_bytes(random_image(rng, 24, 32), quality=95)[:300]),
        (_image(4, "corrupt.png"), b"\x89PNG\r\n\x1a\n" + rng.bytes(200)),
        (_image(5, "wrong_size.png"), png_bytes(random_image(rng, 20, 32))),
    ]
    annotations = [_box_annotation(i, [2, 2, 10, 10]) for i in range(1, 6)]
    path = write_coco(tmp_path, images, annotations)
    dataset = COCODataset(path, tmp_path / "images")
    config = DataConfig(min_size=(32,), max_size=64, gt_mask_size=8, seed=0)
    with caplog.at_level(logging.WARNING, logger="kmask.data"):
        batches = list(dataset.build(config, training=True, batch_size=1))
    assert [int(f["image_id"][0]) for f, _ in batches] == [1]
    assert dataset.report.skipped == {
        "missing image file": 1,
        "corrupt or truncated image": 2,
        "image size differs from the JSON": 1,
    }
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for image_id, name in [(2, "missing.png"), (3, "truncated.jpg"), (4, "corrupt.png")]:
        assert f"image id {image_id}" in messages and name in messages
    assert "end of the first epoch" in messages and "skipped 2 x corrupt" in messages

    strict = COCODataset(path, tmp_path / "images", strict=True)
    with pytest.raises(Exception, match="missing image file"):
        list(strict.build(config, training=False, batch_size=1))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA"])
def test_unusual_png_modes_become_rgb(mode):
    rng = np.random.default_rng(4)
    rgb = random_image(rng, 6, 8)
    if mode == "I;16":
        gray16 = rng.integers(0, 65536, size=(6, 8)).astype(np.uint16)
        decoded, keep = decode_rgb(png_bytes(gray16))
        expected = np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    else:
        decoded, keep = decode_rgb(png_bytes(rgb, mode))
        expected = np.asarray(Image.fromarray(rgb).convert(mode).convert("RGB"))
    assert decoded.dtype == np.uint8 and decoded.shape == (6, 8, 3)
    np.testing.assert_array_equal(decoded, expected)
    assert keep == ("png" if mode == "L" else None)  # only 8-bit RGB/L is stored as is
    if mode == "RGBA":
        np.testing.assert_array_equal(decoded, rgb)  # alpha dropped, colour kept
