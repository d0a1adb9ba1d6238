"""The batched pipeline: the element format agreed with the model, seeds, static shapes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import build_dataset, open_dataset
from tests.toy_data import write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = write_shapes(tmp_path_factory.mktemp("shapes"), 8, 3, image_size=48, seed=5, max_shapes=5)
    return out / "train.json", out


def _collect(dataset):
    return [
        ({k: v.numpy() for k, v in f.items()}, {k: v.numpy() for k, v in t.items()})
        for f, t in dataset
    ]


def test_element_format(shapes):
    json_path, images_dir = shapes
    config = DataConfig(min_size=(40, 56), max_size=70, gt_mask_size=14, max_instances=6, seed=1)
    dataset = build_dataset(
        config, json_path=json_path, images_dir=images_dir, training=True, batch_size=3
    )
    features_spec, targets_spec = dataset.element_spec
    assert {k: (s.dtype, s.shape.as_list()) for k, s in features_spec.items()} == {
        "images": (tf.float32, [3, None, None, 3]),
        "image_size": (tf.int32, [3, 2]),
        "original_size": (tf.int32, [3, 2]),
        "image_id": (tf.int64, [3]),
    }
    assert {k: (s.dtype, s.shape.as_list()) for k, s in targets_spec.items()} == {
        "gt_boxes": (tf.float32, [3, 6, 4]),
        "gt_classes": (tf.int32, [3, 6]),
        "gt_masks": (tf.uint8, [3, 6, 14, 14]),
        "seed": (tf.int64, [3]),  # training only: the images' seeds, for the model's sampling
    }
    batches = _collect(dataset)
    assert len(batches) == 2  # 8 images, training drops the partial batch
    for features, targets in batches:
        assert features["images"].shape[1] % 32 == 0 and features["images"].shape[2] % 32 == 0
        assert features["images"].max() <= 255 and features["images"].max() > 1  # raw pixels
        for image, (h, w) in zip(features["images"], features["image_size"]):
            assert min(h, w) in (40, 56)
            assert not image[h:].any() and not image[:, w:].any()
        np.testing.assert_array_equal(features["original_size"], 48)
        valid = targets["gt_classes"] >= 0
        assert valid.any(axis=1).all() and set(np.unique(targets["gt_classes"])) <= {-1, 0, 1, 2}
        assert not targets["gt_boxes"][~valid].any() and not targets["gt_masks"][~valid].any()
        assert targets["gt_masks"].max() == 1
        boxes = targets["gt_boxes"][valid]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_seed_makes_the_pipeline_repeatable(shapes):
    json_path, images_dir = shapes
    config = DataConfig(min_size=(32, 48), max_size=64, gt_mask_size=8, max_instances=5, seed=7)

    def two_epochs():
        dataset = build_dataset(
            config, json_path=json_path, images_dir=images_dir, training=True, batch_size=2
        )
        return _collect(dataset), _collect(dataset)

    first_run, second_run = two_epochs(), two_epochs()
    for epoch_a, epoch_b in zip(first_run, second_run):
        for (fa, ta), (fb, tb) in zip(epoch_a, epoch_b):
            for key in fa:
                np.testing.assert_array_equal(fa[key], fb[key])
            for key in ta:
                np.testing.assert_array_equal(ta[key], tb[key])
    order = lambda epoch: [int(i) for f, _ in epoch for i in f["image_id"]]  # noqa: E731
    assert order(first_run[0]) != order(first_run[1])  # reshuffled every epoch


def test_fixed_image_size_gives_static_shapes(shapes):
    json_path, images_dir = shapes
    config = DataConfig(
        min_size=(40,), max_size=64, image_size=(64, 64), gt_mask_size=8, max_instances=5
    )
    source = open_dataset(json_path=json_path.with_name("val.json"), images_dir=images_dir)
    dataset = source.build(config, training=False, batch_size=2)
    assert dataset.element_spec[0]["images"].shape.as_list() == [None, 64, 64, 3]
    batches = _collect(dataset)
    assert [len(f["image_id"]) for f, _ in batches] == [2, 1]  # evaluation keeps the rest
    assert source.num_classes == 3 and source.category_names == ("circle", "square", "triangle")
