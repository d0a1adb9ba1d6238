"""TFRecord shards: round trip against the JSON reader, the Object Detection API layout,
atomic conversion."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import COCODataset, DataError, ShardDataset, ShardWriter, open_dataset
from tests.data.mask_crop_reference import assert_crop_matches, bilinear_reference
from tests.toy_data import CATEGORIES, jpeg_bytes, png_bytes


def _examples_by_id(dataset):
    return {int(e["image_id"]): e for e in dataset.examples().as_numpy_iterator()}


def test_json_and_shards_give_the_same_examples_and_batches(mixed_coco, tmp_path):
    json_path, images_dir, _ = mixed_coco
    coco = COCODataset(json_path, images_dir)
    writer = ShardWriter(tmp_path / "shards", num_shards=2, prefix="mixed")
    paths = writer.write(coco, progress=False)
    assert [p.name for p in paths] == [
        "mixed-00000-of-00002.tfrecord",
        "mixed-00001-of-00002.tfrecord",
    ]
    assert (writer.images_written, writer.instances_written) == (3, 5)
    shards = open_dataset(tfrecord_pattern=str(tmp_path / "shards" / "mixed-*.tfrecord"))
    assert shards.category_ids == coco.category_ids
    assert shards.category_names == coco.category_names
    assert shards.keypoint_names == coco.keypoint_names

    from_json, from_shards = _examples_by_id(coco), _examples_by_id(shards)
    assert sorted(from_json) == sorted(from_shards) == [11, 12, 13]
    for image_id, expected in from_json.items():
        actual = from_shards[image_id]
        np.testing.assert_array_equal(actual["image"], expected["image"])
        np.testing.assert_array_equal(actual["classes"], expected["classes"])
        np.testing.assert_allclose(actual["boxes"], expected["boxes"], atol=1e-4)
        np.testing.assert_array_equal(actual["masks"], expected["masks"])
        np.testing.assert_allclose(actual["keypoints"], expected["keypoints"], atol=1e-4)

    config = DataConfig(min_size=(40,), max_size=80, gt_mask_size=16, max_instances=4)
    batches = {}
    for name, source in (("json", coco), ("shards", shards)):
        for features, targets in source.build(config, training=False, batch_size=1):
            batches[name, int(features["image_id"][0])] = (features, targets)
    for image_id, example in from_json.items():
        features, targets = batches["json", image_id]
        other_features, other_targets = batches["shards", image_id]
        np.testing.assert_array_equal(features["images"], other_features["images"])
        np.testing.assert_allclose(targets["gt_boxes"], other_targets["gt_boxes"], atol=1e-3)
        np.testing.assert_array_equal(targets["gt_classes"], other_targets["gt_classes"])
        for k, (mask, box) in enumerate(zip(example["masks"], example["boxes"])):
            reference = bilinear_reference(mask, box, 16)
            assert_crop_matches(targets["gt_masks"][0, k], reference)
            assert_crop_matches(other_targets["gt_masks"][0, k], reference)
    train = shards.build(config, training=True, batch_size=1)
    assert sorted(int(f["image_id"][0]) for f, _ in train) == [11, 12]  # 13 has no instances


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def test_object_detection_api_shard_reads_correctly(tmp_path):
    """A shard as the Object Detection API's COCO tool writes it, built by hand."""
    height, width = 40, 60
    image = np.full((height, width, 3), 90, np.uint8)
    dog = np.zeros((height, width), np.uint8)
    dog[10:30, 5:25] = 255  # PNG masks may use any nonzero value
    crowd = np.zeros((height, width), np.uint8)
    crowd[0:10, 40:60] = 1
    person = np.zeros((height, width), np.uint8)
    person[20:40, 30:50] = 1
    first = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/height": _ints([height]),
                "image/width": _ints([width]),
                "image/filename": _bytes([b"x.jpg"]),
                "image/source_id": _bytes([b"4242"]),
                "image/encoded": _bytes([jpeg_bytes(image, quality=98)]),
                "image/format": _bytes([b"jpeg"]),
                "image/object/bbox/xmin": _floats([5 / 60, 40 / 60, 30 / 60, 0.5]),
                "image/object/bbox/xmax": _floats([25 / 60, 1.0, 50 / 60, 0.9]),
                "image/object/bbox/ymin": _floats([10 / 40, 0.0, 20 / 40, 0.5]),
                "image/object/bbox/ymax": _floats([30 / 40, 10 / 40, 1.0, 0.9]),
                "image/object/class/label": _ints([7, 3, 1, 2]),  # 2: not a category
                "image/object/class/text": _bytes([b"dog", b"car", b"person", b"cat"]),
                "image/object/is_crowd": _ints([0, 1, 0, 0]),
                "image/object/area": _floats([400.0, 200.0, 400.0, 100.0]),
                "image/object/mask": _bytes([png_bytes(m) for m in (dog, crowd, person, person)]),
            }
        )
    )
    # A second record with names but no labels, no masks and a non-numeric source id.
    second = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/source_id": _bytes([b"frame_a"]),
                "image/encoded": _bytes([png_bytes(image)]),
                "image/object/bbox/xmin": _floats([0.1]),
                "image/object/bbox/xmax": _floats([0.5]),
                "image/object/bbox/ymin": _floats([-0.2]),  # outside: clipped to 0
                "image/object/bbox/ymax": _floats([0.5]),
                "image/object/class/text": _bytes([b"car"]),
            }
        )
    )
    path = tmp_path / "od-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(first.SerializeToString())
        writer.write(second.SerializeToString())
    categories = [{k: v for k, v in c.items() if k != "keypoints"} for c in CATEGORIES]
    dataset = ShardDataset(str(path), categories)
    first_out, second_out = list(dataset.examples().as_numpy_iterator())

    assert first_out["image_id"] == 4242
    assert np.abs(first_out["image"].astype(int) - 90).max() <= 2  # JPEG
    assert first_out["classes"].tolist() == [2, 0]  # dog, person; crowd and unknown left out
    np.testing.assert_allclose(first_out["boxes"], [[10, 5, 30, 25], [20, 30, 40, 50]], atol=1e-4)
    np.testing.assert_array_equal(first_out["masks"], np.stack([dog > 0, person]).astype(np.uint8))

    assert second_out["classes"].tolist() == [1]
    np.testing.assert_allclose(second_out["boxes"], [[0, 6, 20, 30]], atol=1e-4)
    expected = np.zeros((height, width), np.uint8)
    expected[0:20, 6:30] = 1  # no mask in the record: the box
    np.testing.assert_array_equal(second_out["masks"][0], expected)
    assert second_out["image_id"] != 4242

    config = DataConfig(min_size=(40,), max_size=80, gt_mask_size=8)
    features, targets = next(iter(dataset.build(config, training=False, batch_size=2)))
    assert targets["gt_classes"].numpy()[:, :3].tolist() == [[2, 0, -1], [1, -1, -1]]


def test_shards_need_categories(tmp_path):
    path = tmp_path / "x-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)):
        pass
    with pytest.raises(DataError, match="categories.json"):
        ShardDataset(str(path))
    with pytest.raises(DataError, match="no TFRecord files match"):
        ShardDataset(str(tmp_path / "nothing-*.tfrecord"), CATEGORIES)


def test_interrupted_conversion_leaves_no_shard(mixed_coco, tmp_path):
    json_path, images_dir, _ = mixed_coco
    dataset = COCODataset(json_path, images_dir)
    original = dataset.read_image
    calls = []

    def interrupt_on_third(record):
        calls.append(record.image_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(record)

    dataset.read_image = interrupt_on_third
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ShardWriter(out, num_shards=3, num_workers=1).write(dataset, progress=False)
    assert list(out.iterdir()) == []

    (images_dir / "b.png").unlink()
    with pytest.raises(DataError, match="missing image file"):
        ShardWriter(out, num_shards=2).write(
            COCODataset(json_path, images_dir, strict=True), progress=False
        )
    assert list(out.iterdir()) == []


def test_conversion_refuses_to_mix_with_other_shards(mixed_coco, tmp_path):
    dataset = COCODataset(*mixed_coco[:2])
    out = tmp_path / "out"
    ShardWriter(out, num_shards=2).write(dataset, progress=False)
    ShardWriter(out, num_shards=2).write(dataset, progress=False)  # same layout: replaced
    with pytest.raises(DataError, match="another conversion"):
        ShardWriter(out, num_shards=3).write(dataset, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "categories.json",
        "coco-00000-of-00002.tfrecord",
        "coco-00001-of-00002.tfrecord",
    ]
