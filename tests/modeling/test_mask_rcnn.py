"""The whole model on data-pipeline batches, with a tiny stand-in backbone.

The stand-in (a few strided convs with 8..64 channels) keeps these tests fast on a CPU;
``MaskRCNN`` takes any backbone with the ``{"C2".."C5"}`` contract. The ResNet-50 model of
``build_mask_rcnn`` is covered in ``test_factory.py``.
"""

import json
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.layers.image_normalization import ImageNormalization
from kmask.modeling import FPN, RPN, BoxHead, MaskHead, MaskRCNN, ROIHeads
from tests.keras_harness import (
    MIXED_POLICIES,
    assert_mixed_precision,
    assert_round_trip,
    global_dtype_policy,
)
from tests.toy_data import (
    THREE_SHAPES_SIZE,
    decoded_example,
    fit_one_image,
    pipeline_batches,
    three_shapes,
)

SIZE = THREE_SHAPES_SIZE
NUM_CLASSES = 3
LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")
DETECTION_KEYS = {
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "detection_masks",
    "num_detections",
}


@keras.saving.register_keras_serializable(package="kmask_tests")
class TinyBackbone(keras.layers.Layer):
    """Stand-in backbone: four strided 3x3 convs giving C2..C5 at strides 4..32."""

    def __init__(self, width: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.convs = [
            keras.layers.Conv2D(
                width * 2**i,
                3,
                strides=4 if i == 0 else 2,
                padding="same",
                activation="relu",
                dtype=self.dtype_policy,
            )
            for i in range(4)
        ]

    def build(self, images_shape):
        channels = 3
        for i, conv in enumerate(self.convs):
            conv.build((None, None, None, channels))
            channels = self.width * 2**i

    def call(self, images):
        x = tf.cast(images, self.compute_dtype)
        features = {}
        for i, conv in enumerate(self.convs):
            x = conv(x)
            features[f"C{i + 2}"] = x
        return features

    def compute_output_shape(self, images_shape):
        def down(size, stride):
            return None if size is None else -(-size // stride)

        return {
            f"C{i + 2}": (
                images_shape[0],
                down(images_shape[1], 4 * 2**i),
                down(images_shape[2], 4 * 2**i),
                self.width * 2**i,
            )
            for i in range(4)
        }

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def tiny_model(box_head: bool = True, mask_head: bool = True) -> MaskRCNN:
    """Mask R-CNN on ``TinyBackbone``; Faster R-CNN without the mask head, RPN only
    without the box head. Inputs are scaled to 0..1 as the stand-in backbone expects."""
    channels = 16
    pooling = {"pooler_levels": (2, 5), "roi_align_implementation": "tf"}
    roi_heads = None
    if box_head:
        masks = [MaskHead(NUM_CLASSES, num_conv=2, conv_dim=channels, **pooling)]
        roi_heads = ROIHeads(
            BoxHead(NUM_CLASSES, fc_dim=32, **pooling),
            masks if mask_head else [],
            batch_size_per_image=64,
        )
    return MaskRCNN(
        normalizer=ImageNormalization("RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        backbone=TinyBackbone(8),
        fpn=FPN(channels),
        rpn=RPN(
            pre_nms_topk_train=300,
            pre_nms_topk_test=300,
            post_nms_topk_train=100,
            post_nms_topk_test=100,
        ),
        roi_heads=roi_heads,
    )


def _first(dataset: tf.data.Dataset) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    return next(iter(dataset))


def test_fit_evaluate_predict_on_pipeline_batches():
    keras.utils.set_random_seed(0)
    masks, classes, image = three_shapes()
    second = decoded_example(image[:, ::-1].copy(), [m[:, ::-1] for m in masks[:2]], classes[:2], 1)
    dataset = pipeline_batches([decoded_example(image, masks, classes), second], batch_size=2)
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    history = model.fit(dataset.repeat(2), epochs=1, verbose=0)
    assert model.loss_names == LOSS_KEYS
    assert set(history.history) == {"loss", *LOSS_KEYS}
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    assert set(results) == {"loss", *LOSS_KEYS}
    predictions = model.predict(dataset, verbose=0)  # (features, targets) tuples tolerated
    assert set(predictions) >= DETECTION_KEYS
    np.testing.assert_array_equal(predictions["image_id"], [0, 1])
    assert predictions["detection_boxes"].shape == (2, 100, 4)
    assert predictions["detection_masks"].shape == (2, 100, 28, 28)
    assert predictions["detection_classes"].dtype == np.int32
    assert predictions["num_detections"].shape == (2,)
    assert predictions["proposals"].shape == (2, 100, 4)
    assert (predictions["num_proposals"] > 0).all() and predictions["num_proposals"].max() <= 100


@pytest.mark.parametrize(
    "box_head, mask_head, losses, outputs",
    [
        (True, False, LOSS_KEYS[:4], DETECTION_KEYS - {"detection_masks"}),
        (False, False, LOSS_KEYS[:2], set()),
    ],
    ids=["faster_rcnn", "rpn_only"],
)
def test_detector_modes_train_and_predict(box_head, mask_head, losses, outputs):
    keras.utils.set_random_seed(0)
    masks, classes, image = three_shapes()
    dataset = pipeline_batches([decoded_example(image, masks, classes)])
    model = tiny_model(box_head, mask_head)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    history = model.fit(dataset.repeat(2), epochs=1, verbose=0)
    assert model.loss_names == losses
    assert set(history.history) == {"loss", *losses}
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    predictions = model.predict(dataset, verbose=0)
    proposal_keys = {"proposals", "proposal_scores", "num_proposals"}
    assert set(predictions) == outputs | proposal_keys | {"image_id", "image_size", "original_size"}
    scores = predictions["proposal_scores"][0, : predictions["num_proposals"][0]]
    assert (np.diff(scores) <= 0).all()  # best first
    features, _ = _first(dataset)
    restored = assert_round_trip(model, features)
    assert restored.loss_names == losses


def test_losses_and_dynamic_shapes():
    masks, classes, image = three_shapes()
    features, targets = _first(pipeline_batches([decoded_example(image, masks, classes)]))
    model = tiny_model()
    losses = model({**features, **targets}, training=True)
    assert tuple(losses) == LOSS_KEYS
    assert all(v.dtype == tf.float32 and v.shape == () for v in losses.values())
    pyramid = model.fpn(
        model.backbone(model.normalizer(features["images"], features["image_size"]))
    )
    training, _ = model.rpn(pyramid, features["image_size"], training=True)
    assert training["proposals"].shape == (1, 100, 4)
    # One graph for any batch size and image size: no Python loop over images.
    spec = {
        key: tf.TensorSpec([None, *value.shape[1:]], value.dtype) for key, value in features.items()
    }
    spec["images"] = tf.TensorSpec([None, None, None, 3], tf.float32)
    inference = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    doubled = {key: tf.concat([value, value], 0) for key, value in features.items()}
    out = inference(doubled)
    assert out["detection_boxes"].shape == (2, 100, 4)


def _loss_and_gradients(model: MaskRCNN, features, targets):
    with tf.GradientTape() as tape:
        losses = model({**features, **targets}, training=True)
        total = tf.add_n(list(losses.values()))
    return losses, tape.gradient(total, model.trainable_variables)


def test_empty_and_crowd_only_images_give_zero_box_and_mask_losses():
    keras.utils.set_random_seed(1)
    masks, classes, image = three_shapes()
    # A crowd-only image reaches the model without instances (the readers drop crowds).
    empty = decoded_example(image, [], [], image_id=5)
    features, targets = _first(pipeline_batches([empty]))
    assert (targets["gt_classes"].numpy() == -1).all()
    model = tiny_model()
    losses, gradients = _loss_and_gradients(model, features, targets)
    assert np.isfinite(losses["loss_rpn_cls"].numpy()) and losses["loss_rpn_cls"].numpy() > 0
    assert np.isfinite(losses["loss_cls"].numpy())
    for key in ("loss_rpn_box", "loss_box", "loss_mask"):
        assert losses[key].numpy() == 0.0, key
    assert all(g is None or np.isfinite(g.numpy()).all() for g in gradients)
    # Mixed with a normal image in one batch.
    features, targets = _first(
        pipeline_batches([empty, decoded_example(image, masks, classes)], batch_size=2)
    )
    losses, gradients = _loss_and_gradients(model, features, targets)
    assert all(np.isfinite(v.numpy()) for v in losses.values())
    assert losses["loss_mask"].numpy() > 0


def test_hundred_instances():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    masks, classes = [], []
    for i in range(100):
        y, x = rng.integers(0, SIZE - 20, 2)
        h, w = rng.integers(6, 20, 2)
        mask = np.zeros((SIZE, SIZE), bool)
        mask[y : y + h, x : x + w] = True
        masks.append(mask)
        classes.append(i % NUM_CLASSES)
    features, targets = _first(pipeline_batches([decoded_example(image, masks, classes)]))
    assert (targets["gt_classes"].numpy() >= 0).sum() == 100
    model = tiny_model()
    losses, gradients = _loss_and_gradients(model, features, targets)
    assert all(np.isfinite(v.numpy()) and v.numpy() > 0 for v in losses.values())
    assert all(g is None or np.isfinite(g.numpy()).all() for g in gradients)
    assert model(features)["detection_boxes"].shape == (1, 100, 4)


def test_save_and_load_give_identical_outputs(tmp_path):
    masks, classes, image = three_shapes()
    features, _ = _first(pipeline_batches([decoded_example(image, masks, classes)]))
    model = tiny_model()
    before = model(features)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MaskRCNN)
    after = loaded(features)
    for key in DETECTION_KEYS:
        np.testing.assert_array_equal(after[key].numpy(), before[key].numpy(), err_msg=key)
    assert json.dumps(loaded.get_config()) == json.dumps(model.get_config())
    lines = []
    loaded.summary(print_fn=lambda line, **kwargs: lines.append(line))
    assert "roi_heads" in "\n".join(lines)


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_mixed_precision(policy):
    keras.utils.set_random_seed(2)
    masks, classes, image = three_shapes()
    dataset = pipeline_batches([decoded_example(image, masks, classes)])
    features, targets = _first(dataset)
    # Every layer with weights (RPN head, mask head convs, ...) computes in the half dtype
    # on float32 variables; every loss is float32.
    run = assert_mixed_precision(
        tiny_model, {**features, **targets}, training=True, policies=(policy,)
    )[policy]
    model = run.layer
    with global_dtype_policy(policy):
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        history = model.fit(dataset.repeat(2), verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        detections = model.predict(dataset, verbose=0)
        assert detections["detection_boxes"].dtype == np.float32
        assert detections["detection_masks"].dtype == np.float32
        assert detections["proposals"].dtype == np.float32


def test_overfits_one_image():
    """Three instances, 400 Adam steps: losses fall 10x, boxes and masks match (IoU > 0.8)."""
    # Step decay settles the boxes (kernels are multi-threaded, so runs are not bit-exact:
    # the margins, loss ratio 24-41x and IoU >= 0.89 over six seeds, absorb that).
    fit = fit_one_image(tiny_model)
    assert fit.final["loss"] < fit.initial["loss"] / 10, (fit.initial, fit.final)
    assert min(fit.box_ious) > 0.8, fit.box_ious
    assert min(fit.mask_ious) > 0.8, fit.mask_ious
