"""The stick-figure keypoint dataset, the keypoint flip and range-sampled training scales."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO

from kmask.cli import main
from kmask.config import DataConfig
from kmask.data import CategoryMap, COCODataset, transforms
from kmask.data.stick_figures_dataset import KEYPOINT_NAMES, StickFiguresDataset


def test_make_shapes_keypoints_writes_coco_person_keypoints(tmp_path):
    args = ["make-shapes", "--keypoints", "--num-train", "3", "--num-val", "6"]
    args += ["--image-size", "96", "--seed", "5"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for split in ("train", "val"):
        a = (tmp_path / "a" / f"{split}.json").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.json").read_bytes()
    coco = COCO(str(tmp_path / "a" / "val.json"))
    (category,) = coco.dataset["categories"]
    assert category["keypoints"] == list(KEYPOINT_NAMES) and len(category["skeleton"]) == 12
    visibility = []
    for annotation in coco.dataset["annotations"]:
        keypoints = np.reshape(annotation["keypoints"], (-1, 3))
        assert annotation["num_keypoints"] == np.count_nonzero(keypoints[:, 2])
        # Unlabelled keypoints are (0, 0, 0); labelled ones lie inside the image.
        assert (keypoints[keypoints[:, 2] == 0] == 0).all()
        labelled = keypoints[keypoints[:, 2] > 0]
        assert ((labelled[:, :2] >= -0.5) & (labelled[:, :2] < 95.5)).all()
        # A visible keypoint lies on the figure's visible mask.
        mask = coco.annToMask(annotation)
        for x, y, v in keypoints:
            if v == 2:
                assert mask[int(y + 0.5), int(x + 0.5)]
        visibility.extend(keypoints[:, 2].tolist())
    assert {0, 1, 2} <= set(visibility)  # outside, occluded and visible keypoints occur
    dataset = COCODataset(tmp_path / "a" / "val.json", tmp_path / "a")
    assert dataset.keypoint_names == KEYPOINT_NAMES


def test_flip_swaps_left_and_right():
    categories = CategoryMap(StickFiguresDataset.CATEGORIES)
    permutation = categories.flip_permutation()
    for k, name in enumerate(KEYPOINT_NAMES):
        partner = KEYPOINT_NAMES[permutation[k]]
        assert partner == name.replace("left", "#").replace("right", "left").replace("#", "right")
    keypoints = np.zeros((1, len(KEYPOINT_NAMES), 3), np.float32)
    keypoints[0, :, 0] = 10.0 + np.arange(len(KEYPOINT_NAMES))  # x
    keypoints[0, :, 1] = np.arange(len(KEYPOINT_NAMES))  # y
    keypoints[0, :, 2] = 2.0
    flipped = transforms.flip_keypoints_left_right(keypoints, 100.0, permutation).numpy()
    left, right = KEYPOINT_NAMES.index("left_knee"), KEYPOINT_NAMES.index("right_knee")
    np.testing.assert_allclose(flipped[0, left], [100.0 - (10.0 + right), right, 2.0])
    np.testing.assert_allclose(flipped[0, right], [100.0 - (10.0 + left), left, 2.0])
    # An explicit flip_map replaces the names' rule.
    custom = [dict(StickFiguresDataset.CATEGORIES[0], flip_map=[["head", "left_wrist"]])]
    swapped = CategoryMap(custom).flip_permutation()
    assert swapped[0] == 3 and swapped[3] == 0 and swapped[1] == 1


def test_range_sampling_draws_every_size_between_the_bounds():
    config = DataConfig(
        min_size=(20, 26), min_size_sampling="range", max_size=1000, gt_mask_size=8,
        horizontal_flip=False,
    )  # fmt: skip
    example = {
        "image": tf.zeros([40, 40, 3], tf.uint8),
        "image_id": tf.constant(1, tf.int64),
        "boxes": tf.constant([[4.0, 4.0, 30.0, 30.0]]),
        "classes": tf.constant([0]),
        "masks": tf.ones([1, 40, 40], tf.uint8),
    }
    sizes = {
        int(transforms.preprocess(example, tf.constant(s, tf.int64), config=config,
                                  training=True)[0]["image_size"][0])
        for s in range(60)
    }  # fmt: skip
    assert sizes == set(range(20, 27))
    evaluation = transforms.preprocess(example, tf.constant(0, tf.int64), config=config,
                                       training=False)  # fmt: skip
    assert int(evaluation[0]["image_size"][0]) == 26
