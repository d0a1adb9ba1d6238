"""Geometry of the tf.data transforms against hand-computed cases and NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import CategoryMap, transforms
from tests.data.mask_crop_reference import assert_crop_matches, bilinear_reference
from tests.toy_data import CATEGORIES


@pytest.mark.parametrize(
    "size, min_size, max_size, fixed, expected",
    [
        ((480, 640), 800, 1333, None, (800, 1067)),  # 640 * 800 / 480 = 1066.67
        ((300, 1000), 800, 1333, None, (400, 1333)),  # the longer side limits: 1333 / 1000
        ((640, 480), 800, 1333, None, (1067, 800)),
        ((800, 1333), 800, 1333, None, (800, 1333)),
        ((480, 640), 800, 1333, (512, 512), (384, 512)),  # shrunk to fit the fixed canvas
        ((100, 100), 32, 64, None, (32, 32)),
    ],
)
def test_resized_size_hand_computed(size, min_size, max_size, fixed, expected):
    result = transforms.resized_size(size[0], size[1], min_size, max_size, fixed)
    assert tuple(result.numpy()) == expected


def test_crop_hand_computed_integer_boxes():
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 2:6, 1:4] = 1
    mask[0, 3, 2] = 0
    # Box of exactly M pixels: cells sit on pixel centres, the crop is the mask itself.
    crop = transforms.crop_masks_to_boxes(mask, np.array([[2, 1, 6, 5]], np.float32), 4)
    np.testing.assert_array_equal(crop.numpy()[0], mask[0, 2:6, 1:5])
    # Box of 2M pixels: each cell averages a 2x2 block (weights 1/4), on when >= 2 of 4 are.
    crop = transforms.crop_masks_to_boxes(mask, np.array([[0, 0, 8, 8]], np.float32), 4)
    blocks = mask[0].reshape(4, 2, 4, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(crop.numpy()[0], (blocks >= 2).astype(np.uint8))


def test_crop_matches_numpy_reference_random_boxes():
    rng = np.random.default_rng(3)
    masks = (rng.random((6, 23, 31)) < 0.5).astype(np.uint8)
    masks[:, 5:15, 8:20] = 1  # large connected parts next to noise
    y1 = rng.uniform(0, 20, 6)
    x1 = rng.uniform(0, 28, 6)
    boxes = np.stack([y1, x1, y1 + rng.uniform(0.3, 23 - y1), x1 + rng.uniform(0.3, 31 - x1)], 1)
    boxes[0] = [0, 0, 23, 31]  # whole image: edge cells hold the edge values
    mask_size = 9
    crops = transforms.crop_masks_to_boxes(masks, boxes.astype(np.float32), mask_size).numpy()
    assert crops.shape == (6, mask_size, mask_size) and crops.dtype == np.uint8
    for mask, box, crop in zip(masks, boxes, crops):
        assert_crop_matches(crop, bilinear_reference(mask, box, mask_size))


def test_flip_helpers_hand_computed():
    boxes = tf.constant([[1.0, 2.0, 5.0, 7.0]])
    np.testing.assert_allclose(transforms.flip_boxes_left_right(boxes, 10.0), [[1, 3, 5, 8]])
    keypoints = tf.constant([[[2.0, 1.0, 2.0], [4.0, 3.0, 1.0], [0.0, 0.0, 0.0]]])  # (x, y, v)
    flipped = transforms.flip_keypoints_left_right(keypoints, 10.0, [1, 0, 2])
    np.testing.assert_allclose(flipped[0], [[6, 3, 1], [8, 1, 2], [0, 0, 0]])


def test_coco_flip_permutation():
    coco_flip_map = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    assert CategoryMap(CATEGORIES).flip_permutation() == coco_flip_map


def _example(height=30, width=44):
    """An image whose content is its instances: instance k's pixels have value 40 * (k + 1)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    first = ((ys - 12) ** 2 / 64 + (xs - 14) ** 2 / 100 <= 1).astype(np.uint8)
    second = np.zeros((height, width), np.uint8)
    second[3:9, 30:42] = 1
    masks = np.stack([first, second])
    image = np.zeros((height, width, 3), np.uint8)
    image[first > 0] = 40
    image[second > 0] = 80
    boxes = np.array([[4, 4, 20, 24], [3, 30, 9, 42]], np.float32)
    keypoints = np.zeros((2, 17, 3), np.float32)
    keypoints[0, 1] = [8.5, 10.5, 2]  # left_eye (x, y, v)
    keypoints[0, 2] = [20.5, 10.5, 1]  # right_eye
    return {
        "image": image,
        "image_id": np.int64(5),
        "boxes": boxes,
        "classes": np.array([1, 0], np.int32),
        "masks": masks,
        "keypoints": keypoints,
    }


def _run(example, config, training, seed):
    features, targets = transforms.preprocess(
        {k: tf.constant(v) for k, v in example.items()},
        tf.constant(seed, tf.int64),
        config=config,
        training=training,
        flip_permutation=CategoryMap(CATEGORIES).flip_permutation(),
    )
    return {k: v.numpy() for k, v in features.items()}, {k: v.numpy() for k, v in targets.items()}


def _find_flip_seeds(config):
    """Seeds whose draw flips and does not flip (the draw is stateless: found by trying)."""
    flips = {}
    for seed in range(40):
        _, targets = _run(_example(), config, True, seed)
        flips.setdefault(bool(targets["gt_boxes"][1, 1] < 20), seed)
    assert set(flips) == {True, False}
    return flips


def test_preprocess_geometry_against_numpy():
    config = DataConfig(min_size=(60,), max_size=100, gt_mask_size=12, max_instances=4, seed=0)
    example = _example()
    seeds = _find_flip_seeds(config)
    for flipped, seed in seeds.items():
        features, targets = _run(example, config, True, seed)
        scale = 60 / 30  # shorter side 30 -> 60; longer 44 -> 88 <= 100
        assert features["image_size"].tolist() == [60, 88]
        assert features["original_size"].tolist() == [30, 44]
        assert features["images"].shape == (64, 96, 3)  # multiple of 32
        assert not features["images"][60:].any() and not features["images"][:, 88:].any()
        expected_boxes = example["boxes"] * scale
        expected_keypoints = example["keypoints"][0, 1:3, :2] * scale
        if flipped:
            expected_boxes[:, [1, 3]] = 88 - expected_boxes[:, [3, 1]]
            # left_eye becomes the right eye, both mirrored.
            expected_keypoints = expected_keypoints[::-1] * [-1, 1] + [88, 0]
        np.testing.assert_allclose(targets["gt_boxes"][:2], expected_boxes, rtol=1e-6)
        np.testing.assert_array_equal(targets["gt_boxes"][2:], 0)
        np.testing.assert_array_equal(targets["gt_classes"], [1, 0, -1, -1])
        np.testing.assert_allclose(targets["gt_keypoints"][0, 1:3, :2], expected_keypoints)
        np.testing.assert_array_equal(
            targets["gt_keypoints"][0, 1:3, 2], [1, 2] if flipped else [2, 1]
        )
        assert not targets["gt_keypoints"][0, 3:].any()
        assert not targets["gt_masks"][2:].any()
        # The box and its mask stay aligned with the image: cropping the transformed
        # image's instance pixels in the transformed box reproduces the mask target.
        for k, level in enumerate((40, 80)):
            inside = (np.abs(features["images"][..., 0] - level) < level / 2).astype(np.float64)
            reference = bilinear_reference(inside, targets["gt_boxes"][k], config.gt_mask_size)
            assert_crop_matches(targets["gt_masks"][k], reference, tolerance=0.15)
            # And against the source mask in the source box, flipped by hand.
            source = bilinear_reference(example["masks"][k], example["boxes"][k], 12)
            assert_crop_matches(targets["gt_masks"][k], source[:, ::-1] if flipped else source)


def test_preprocess_evaluation_is_deterministic_and_uses_largest_min_size():
    config = DataConfig(min_size=(20, 40), max_size=1000, gt_mask_size=8, max_instances=3)
    results = [_run(_example(), config, False, seed) for seed in (1, 2)]
    for features, _ in results:
        assert features["image_size"].tolist() == [40, 59]  # 44 * 40 / 30 = 58.67
    np.testing.assert_array_equal(results[0][1]["gt_boxes"], results[1][1]["gt_boxes"])


def test_preprocess_multiscale_draws_each_size():
    config = DataConfig(min_size=(20, 40), max_size=1000, gt_mask_size=8, horizontal_flip=False)
    sizes = {tuple(_run(_example(), config, True, s)[0]["image_size"]) for s in range(12)}
    assert sizes == {(20, 29), (40, 59)}


def test_preprocess_fixed_image_size_and_truncation():
    config = DataConfig(
        min_size=(60,), max_size=100, image_size=(48, 64), max_instances=1, gt_mask_size=8
    )
    features, targets = _run(_example(), config, False, 0)
    assert features["images"].shape == (48, 64, 3)
    assert features["image_size"].tolist() == [44, 64]  # 30x44 scaled by 64/44
    assert targets["gt_boxes"].shape == (1, 4) and targets["gt_classes"].tolist() == [1]


def test_preprocess_without_instances():
    example = _example()
    example.update(
        boxes=np.zeros((0, 4), np.float32),
        classes=np.zeros((0,), np.int32),
        masks=np.zeros((0, 30, 44), np.uint8),
        keypoints=np.zeros((0, 17, 3), np.float32),
    )
    config = DataConfig(min_size=(32,), max_size=64, gt_mask_size=8, max_instances=3)
    _, targets = _run(example, config, True, 0)
    np.testing.assert_array_equal(targets["gt_classes"], [-1, -1, -1])
    assert not targets["gt_masks"].any() and not targets["gt_boxes"].any()


def test_resized_size_floor_rounding_as_torchvision():
    # 160x243 at scale 1.2: 291.6 -> 292 rounded (detectron2), 291 floored (torchvision).
    rounded = transforms.resized_size(160, 243, 192, 1333)
    floored = transforms.resized_size(160, 243, 192, 1333, rounding="floor")
    assert rounded.numpy().tolist() == [192, 292]
    assert floored.numpy().tolist() == [192, 291]
