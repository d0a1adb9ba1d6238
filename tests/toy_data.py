"""The synthetic data of the test suite, in one place.

- Images and encodings: ``random_image``, ``png_bytes``, ``jpeg_bytes``.
- COCO files: ``CATEGORIES`` (with the 17 COCO keypoints on "person"), the two RLE forms,
  ``write_coco`` and ``write_mixed_coco`` (a small file with every kind of annotation).
- Decoded examples and pipeline batches: ``three_shapes`` (a 128 px image with three
  instances), ``decoded_example``, ``pipeline_batches``.
- Shapes datasets (``kmask.data.ShapesDataset``): ``write_shapes`` and the tiny
  configuration that trains on them (``tiny_overrides``, ``tiny_config``).

Every generator takes its sizes and seeds as arguments or fixes them here, so the tests
that use it see the same numbers on every run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from kmask.config import Config, DataConfig, load_config
from kmask.data import ShapesDataset
from kmask.data.pipeline import batch_examples
from kmask.ops import boxes as box_ops
from kmask.ops.masks import paste_masks

# ------------------------------------------------------------------- images and encodings


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uniform noise, uint8 RGB."""
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    """``array`` as a PNG file, converted to the PIL ``mode`` first when given."""
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- COCO files

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip

# Ids not contiguous and not sorted: contiguous classes follow the sorted ids (1, 3, 7).
CATEGORIES = [
    {"id": 7, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person", "keypoints": COCO_KEYPOINTS},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_coco(
    root: Path,
    images: list[tuple[dict, bytes | None]],
    annotations: list[dict],
    categories: list[dict] | None = None,
    name: str = "ann.json",
) -> Path:
    """Writes image files (None = leave missing) under root/images and the JSON at root/name."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for entry, data in images:
        if data is not None:
            (root / "images" / entry["file_name"]).write_bytes(data)
    path = root / name
    path.write_text(
        json.dumps(
            {
                "images": [entry for entry, _ in images],
                "annotations": [dict(a, id=a.get("id", i + 1)) for i, a in enumerate(annotations)],
                "categories": categories if categories is not None else CATEGORIES,
            }
        )
    )
    return path


def write_mixed_coco(root: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Three images with polygon, compressed RLE, uncompressed RLE, box-only, crowd and
    keypoint annotations, and one image without annotations, written under ``root``.
    Returns (json, images, masks) where masks has the full masks "rect", "blob" (image 12)
    and "crowd" (image 11)."""
    rng = np.random.default_rng(0)
    h1, w1 = 48, 64
    h2, w2 = 40, 56
    rect = np.zeros((h2, w2), np.uint8)
    rect[5:20, 10:31] = 1
    blob = np.zeros((h2, w2), np.uint8)
    blob[22:37, 30:50] = 1
    blob[25:30, 35:40] = 0
    crowd = np.zeros((h1, w1), np.uint8)
    crowd[30:46, 2:20] = 1
    keypoints = [0] * 51
    keypoints[3:6] = [20, 10, 2]  # left_eye
    keypoints[6:9] = [25, 11, 1]  # right_eye
    images = [
        (
            {"id": 11, "file_name": "a.png", "height": h1, "width": w1},
            png_bytes(random_image(rng, h1, w1)),
        ),
        (
            {"id": 12, "file_name": "b.png", "height": h2, "width": w2},
            png_bytes(random_image(rng, h2, w2)),
        ),
        (
            {"id": 13, "file_name": "c.png", "height": 32, "width": 32},
            png_bytes(random_image(rng, 32, 32)),
        ),
    ]
    annotations = [
        {"id": 101, "image_id": 11, "category_id": 1, "bbox": [10.5, 4.25, 30, 28],
         "segmentation": [[10.5, 4.25, 40.5, 4.25, 40.5, 32.25, 25, 20, 10.5, 32.25]],
         "area": 700.0, "iscrowd": 0, "keypoints": keypoints, "num_keypoints": 2},
        {"id": 102, "image_id": 11, "category_id": 3, "bbox": [2, 30, 18, 16],
         "segmentation": uncompressed_rle(crowd), "area": 288.0, "iscrowd": 1},
        {"id": 103, "image_id": 11, "category_id": 7, "bbox": [44, 2, 16, 9], "area": 144.0,
         "iscrowd": 0, "segmentation": []},
        {"id": 201, "image_id": 12, "category_id": 7, "bbox": [10, 5, 21, 15],
         "segmentation": uncompressed_rle(rect), "area": float(rect.sum()), "iscrowd": 0},
        {"id": 202, "image_id": 12, "category_id": 3, "bbox": [30, 22, 20, 15],
         "segmentation": compressed_rle(blob), "area": float(blob.sum()), "iscrowd": 0},
    ]  # fmt: skip
    path = write_coco(root, images, annotations)
    return path, root / "images", {"rect": rect, "blob": blob, "crowd": crowd}


# ------------------------------------------------------- decoded examples, pipeline batches

THREE_SHAPES_SIZE = 128


def three_shapes() -> tuple[list[np.ndarray], list[int], np.ndarray]:
    """Three instances (ellipse, rectangle, triangle) of classes 0, 1, 2 on a 128x128
    image. Returns (masks, classes, image)."""
    size = THREE_SHAPES_SIZE
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    image = np.full((size, size, 3), 40, np.uint8)
    masks = [
        ((yy - 40) / 22) ** 2 + ((xx - 36) / 26) ** 2 <= 1,
        (yy > 70) & (yy < 118) & (xx > 20) & (xx < 60),
        (yy > 60) & (yy < 120) & (xx > 70) & (xx - 70 < (yy - 60) * 0.8),
    ]
    for mask, colour in zip(masks, ([220, 50, 50], [50, 220, 50], [50, 50, 220])):
        image[mask] = colour
    return masks, [0, 1, 2], image


def decoded_example(
    image: np.ndarray, masks: list[np.ndarray], classes: list[int], image_id: int = 0
) -> dict[str, np.ndarray]:
    """A decoded example as the data readers yield it (crowd instances already removed);
    the boxes are the masks' extents."""
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return {
        "image": image,
        "image_id": np.int64(image_id),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "classes": np.asarray(classes, np.int32),
        "masks": np.asarray(masks, np.uint8).reshape(-1, *image.shape[:2]),
    }


def pipeline_batches(
    examples: list[dict[str, np.ndarray]], batch_size: int = 1, size: int = THREE_SHAPES_SIZE
) -> tf.data.Dataset:
    """``(features, targets)`` evaluation batches of ``examples`` made by the data pipeline
    itself, resized to ``size`` px, without flipping."""
    config = DataConfig(min_size=(size,), max_size=size, horizontal_flip=False, seed=0)
    columns = {key: [e[key] for e in examples] for key in examples[0]}
    if len({len(b) for b in columns["boxes"]}) == 1:
        dataset = tf.data.Dataset.from_tensor_slices({k: np.stack(v) for k, v in columns.items()})
    else:
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(examples),
            output_signature={
                "image": tf.TensorSpec([None, None, 3], tf.uint8),
                "image_id": tf.TensorSpec([], tf.int64),
                "boxes": tf.TensorSpec([None, 4], tf.float32),
                "classes": tf.TensorSpec([None], tf.int32),
                "masks": tf.TensorSpec([None, None, None], tf.uint8),
            },
        )
    return batch_examples(dataset, config, training=False, batch_size=batch_size)


class OneImageFit(NamedTuple):
    """What ``fit_one_image`` measured."""

    initial: dict[str, float]  # losses before training
    final: dict[str, float]  # losses after
    predictions: dict[str, np.ndarray]  # the trained model's outputs on the image
    box_ious: list[float]  # per instance: IoU of its best-scoring detection of its class
    mask_ious: list[float]  # the same for the pasted mask (0 when no detection)


def fit_one_image(build_model: Callable[[], keras.Model], steps: int = 400) -> OneImageFit:
    """Trains ``build_model()`` on the ``three_shapes`` image with Adam (2e-3, x0.25 at 60%,
    x0.2 at 85% of ``steps``; seed 0) and matches its detections to the instances."""
    keras.utils.set_random_seed(0)
    masks, classes, image = three_shapes()
    example = decoded_example(image, masks, classes)
    dataset = pipeline_batches([example])
    model = build_model()
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(steps * 0.6), int(steps * 0.85)], [2e-3, 5e-4, 1e-4]
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    initial = model.evaluate(dataset, verbose=0, return_dict=True)
    model.fit(dataset.repeat(), steps_per_epoch=steps, epochs=1, verbose=0)
    final = model.evaluate(dataset, verbose=0, return_dict=True)
    predictions = model.predict(dataset, verbose=0)
    size = THREE_SHAPES_SIZE
    pasted = paste_masks(
        predictions["detection_masks"], predictions["detection_boxes"], (size, size)
    ).numpy()[0]
    box_ious, mask_ious = [], []
    for mask, cls, box in zip(masks, classes, example["boxes"]):
        candidates = np.nonzero(predictions["detection_classes"][0] == cls)[0]
        candidates = candidates[candidates < predictions["num_detections"][0]]
        if len(candidates) == 0:
            box_ious.append(0.0)
            mask_ious.append(0.0)
            continue
        best = candidates[0]  # highest score of that class
        box_ious.append(
            float(
                box_ops.pairwise_iou(
                    predictions["detection_boxes"][0, best : best + 1], box[None]
                ).numpy()[0, 0]
            )
        )
        mask_ious.append((pasted[best] & mask).sum() / (pasted[best] | mask).sum())
    return OneImageFit(initial, final, predictions, box_ious, mask_ious)


# -------------------------------------------------------- shapes datasets, tiny configuration

SHAPES_IMAGE_SIZE = 64


def write_shapes(
    root: Path,
    num_train: int = 4,
    num_val: int = 2,
    *,
    image_size: int = SHAPES_IMAGE_SIZE,
    seed: int = 0,
    max_shapes: int = 3,
    shapes: tuple[str, ...] | None = None,
) -> Path:
    """Writes a shapes dataset (``train.json``, ``val.json``, ``train/``, ``val/``) under
    ``root`` (of the classes ``shapes``, default circle, square, triangle); returns
    ``root``."""
    ShapesDataset(image_size, seed=seed, max_shapes=max_shapes, shapes=shapes).write(
        root, num_train, num_val, progress=False
    )
    return root


def tiny_overrides(shapes: Path) -> list[str]:
    """``key=value`` overrides for the 64 px shapes data of ``write_shapes`` at ``shapes``:
    narrow heads, few proposals and RoIs, 6 steps in epochs of 3."""
    return [
        "model.num_classes=3",
        "model.backbone.norm=gn",
        "model.backbone.freeze_at=0",
        "model.fpn.num_channels=32",
        "model.rpn.pre_nms_topk_train=200",
        "model.rpn.post_nms_topk_train=64",
        "model.rpn.pre_nms_topk_test=200",
        "model.rpn.post_nms_topk_test=64",
        "model.rpn.batch_size_per_image=64",
        "model.roi_heads.batch_size_per_image=32",
        "model.box_head.detections_per_image=20",
        "model.box_head.fc_dim=64",
        "model.mask_head.conv_dim=16",
        "model.mask_head.num_conv=1",
        f"data.min_size=[{SHAPES_IMAGE_SIZE}]",
        f"data.max_size={SHAPES_IMAGE_SIZE}",
        "data.max_instances=4",
        f"train.json_path={shapes / 'train.json'}",
        f"train.images_dir={shapes}",
        f"eval.json_path={shapes / 'val.json'}",
        f"eval.images_dir={shapes}",
        "train.batch_size=2",
        "train.base_learning_rate=0.01",
        "train.reference_batch_size=2",
        "train.warmup_steps=2",
        "train.lr_steps=[4]",
        "train.max_steps=6",
        "train.steps_per_epoch=3",
        "train.checkpoint_every_steps=2",
        "train.log_every=1",
        "train.num_visualizations=1",
    ]


def tiny_config(shapes: Path, *more: str) -> Config:
    """The tiny configuration with ``more`` overrides applied last."""
    return load_config(None, [*tiny_overrides(shapes), *more])
