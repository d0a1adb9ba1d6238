"""A tiny Mask R-CNN whose detections differ between images, real encoded test images, and
the Keras model's own predictions as the reference the exports are compared with."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmask.config import Config
from kmask.data import image_io
from kmask.data.category_map import CategoryMap
from kmask.evaluation import Predictor
from kmask.modeling.factory import build_mask_rcnn
from tests.toy_data import tiny_config

# Dataset category ids that are not 1..K, so a 0-based class id leaking out shows.
CATEGORIES = CategoryMap(
    [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 11, "name": "triangle"}]
)
# (height, width) of the test images: portrait, landscape, square, and larger than the
# model's max_size so that every image is resized differently.
IMAGE_SIZES = [(64, 48), (50, 90), (72, 72), (120, 100)]


def shapes_image(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB: a noisy background with a few filled rectangles and discs."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, (height, width, 3)).astype(np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    for _ in range(3):
        color = rng.integers(120, 256, 3)
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        r = rng.uniform(0.1, 0.25) * min(height, width)
        if rng.uniform() < 0.5:
            inside = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        else:
            inside = (abs(y - cy) <= r) & (abs(x - cx) <= r)
        image[inside] = color
    return image


def encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    return [shapes_image(h, w, seed) for seed, (h, w) in enumerate(IMAGE_SIZES)]


@pytest.fixture(scope="session")
def encoded_images(images) -> list[bytes]:
    """PNG and JPEG alternately (what clients send)."""
    return [encode(image, "PNG" if i % 2 == 0 else "JPEG") for i, image in enumerate(images)]


@pytest.fixture(scope="session")
def decoded_images(encoded_images) -> list[np.ndarray]:
    """The encoded images as ``kmask predict`` and the COCO reader decode them (Pillow):
    the exports, which decode in TensorFlow, must see the same pixels, JPEG included."""
    return [image_io.decode_rgb(data)[0] for data in encoded_images]


@pytest.fixture(scope="session")
def config(tmp_path_factory) -> Config:
    return tiny_config(
        tmp_path_factory.mktemp("unused_data"), "data.min_size=[64]", "data.max_size=96"
    )


@pytest.fixture(scope="session")
def model(config) -> keras.Model:
    """The tiny model with random weights; its classifier weights are scaled so that classes
    and scores vary between detections, as a trained model's do."""
    return export_test_model(config, seed=7)


def scale_kernel(layer: keras.layers.Layer, factor: float) -> None:
    """Multiplies ``layer``'s kernel (first weight) by ``factor``."""
    kernel, *rest = layer.get_weights()
    layer.set_weights([kernel * factor, *rest])


def export_test_model(config: Config, seed: int) -> keras.Model:
    """The built model of ``config`` with random weights (``seed``); its classifier kernel
    is scaled x300 so that classes and scores vary between detections, as a trained
    model's do."""
    keras.utils.set_random_seed(seed)
    model = build_mask_rcnn(config.model)
    model.build({"images": (None, None, None, 3)})
    scale_kernel(model.roi_heads.box_head.cls_score, 300.0)
    return model


def padded_batch(predictor: Predictor, images: list[np.ndarray]) -> dict[str, tf.Tensor]:
    """One features batch of ``images`` as ``kmask.data`` makes it: each resized and padded
    by the evaluation preprocessing (``Predictor.features_for_image``), then zero-padded to
    the batch's largest."""
    features = []
    for image in images:
        one = predictor.features_for_image(image)
        features.append({key: value[0] for key, value in one.items()})
    height = max(int(f["images"].shape[0]) for f in features)
    width = max(int(f["images"].shape[1]) for f in features)
    batch = {key: tf.stack([f[key] for f in features]) for key in ("image_size", "original_size")}
    batch["images"] = tf.stack(
        [
            tf.pad(
                f["images"],
                [[0, height - f["images"].shape[0]], [0, width - f["images"].shape[1]], [0, 0]],
            )
            for f in features
        ]
    )
    return batch


def reference(
    model: keras.Model, config: Config, images: list[np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """The Keras model's detections for one batch of decoded images, through kmask's own
    evaluation preprocessing (``padded_batch``) and ``Predictor`` (each image as if alone;
    boxes in source pixels, pasted masks); classes as category ids."""
    predictor = Predictor(model, config.data, config.eval.mask_threshold)
    batch = padded_batch(predictor, images)
    outputs = predictor.predict_batch(batch)
    results = []
    for index, detections in enumerate(predictor.batch_detections(outputs)):
        count = len(detections["scores"])
        ids = np.asarray(CATEGORIES.category_ids)[detections["classes"]]
        results.append(
            {
                "boxes": detections["boxes"],
                "scores": detections["scores"],
                "classes": ids,
                "masks": outputs["detection_masks"][index, :count],
                "full_masks": detections["masks"],
            }
        )
    return results


def assert_same_detections(
    got: dict[str, np.ndarray], index: int, want: dict[str, np.ndarray], full_masks: bool = False
) -> None:
    """Image ``index`` of an exported model's outputs against a ``reference`` entry: same
    count and classes, boxes within 0.1 px, scores within 1e-4, box-frame masks within 1e-3;
    pasted masks agree on >= 99.5% of the pixels (thresholding at 0.5 may flip a few)."""
    count = int(got["num_detections"][index])
    assert count == len(want["scores"])
    np.testing.assert_array_equal(got["detection_classes"][index, :count], want["classes"])
    np.testing.assert_allclose(got["detection_boxes"][index, :count], want["boxes"], atol=0.1)
    np.testing.assert_allclose(got["detection_scores"][index, :count], want["scores"], atol=1e-4)
    np.testing.assert_allclose(got["detection_masks"][index, :count], want["masks"], atol=1e-3)
    assert np.all(got["detection_classes"][index, count:] == -1)
    assert np.all(got["detection_scores"][index, count:] == 0)
    if full_masks:
        height, width = want["full_masks"].shape[1:]
        pasted = got["detection_full_masks"][index, :count, :height, :width].astype(bool)
        assert np.mean(pasted == want["full_masks"]) >= 0.995
        assert not got["detection_full_masks"][index, :, height:].any()
        assert not got["detection_full_masks"][index, :, :, width:].any()


def write_run_directory(root: Path, model: keras.Model, config: Config) -> Path:
    """A ``kmask train``-style run directory (config.yaml, categories.json, one
    checkpoint) holding ``model``'s weights."""
    from kmask.training import RunDirectory

    run = RunDirectory(root)
    run.write_config(config)
    run.write_categories(CATEGORIES)
    run.checkpoints_dir.mkdir(parents=True)
    model.save_weights(run.checkpoints_dir / "ckpt-00000001.weights.h5")
    return root


def resnet_c4_model(root: Path) -> tuple[keras.Model, Config]:
    """A tiny ResNet-C4 Mask R-CNN (no FPN, conv5 per RoI shared by the heads, 14x14 masks)
    with classifier weights scaled as ``model``'s, and its config."""
    config = tiny_config(
        root / "unused",
        "data.min_size=[64]",
        "data.max_size=96",
        "model.fpn=null",
        "model.backbone.out_levels=[4]",
        "model.backbone.norm=none",
        "model.backbone.width_per_group=4",
        "model.rpn.anchor_sizes=[[16, 32, 64]]",
        "model.res5_head={}",
        "model.box_head={pool: average, num_fc: 0}",
        "model.mask_head={pooler_resolution: 7, num_conv: 0, conv_dim: 16}",
    )
    c4 = export_test_model(config, seed=3)
    # Without normalization the random C4 maps reach the hundreds: scale the objectness
    # down so that proposal scores do not underflow to 0 (ONNX's NMS drops those).
    scale_kernel(c4.rpn.head.objectness, 0.01)
    return c4, config
