"""A backbone and a neck written outside kmask, as docs/architecture.md says to add them.

The backbone (strided 3x3 convs) is registered with ``register_backbone`` and
``register_backbone_section``; ``model.backbone: {type: strided_toy, strided_toy: {...}}``
then builds it through the factory. The neck (1x1 laterals, no top-down path) replaces the
FPN when the stages are composed in Python (``MaskRCNN`` takes any layer as ``fpn``). Each
model trains, predicts through ``Predictor`` and round-trips through a ``.keras`` file. No
kmask file knows them."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.config import load_config, register_backbone_section
from kmask.evaluation import Predictor
from kmask.modeling import MaskRCNN, build_mask_rcnn
from kmask.modeling.backbones import Backbone, FeatureSpec, register_backbone
from tests.keras_harness import assert_same_outputs
from tests.toy_data import decoded_example, pipeline_batches, three_shapes, tiny_overrides

# Two small models trained 10 steps each (about a minute here): the slow tier.
pytestmark = pytest.mark.slow

_LEVELS = (2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class StridedToyConfig:
    """``model.backbone.strided_toy``: the toy backbone's own fields."""

    channels: int = 16


@register_backbone("strided_toy")
@keras.saving.register_keras_serializable(package="outside_test")
class StridedToy(Backbone):
    """A 4x4 stride-4 stem to C2, then a 3x3 stride-2 conv per level to C5 ("same"
    padding, so level l is ``ceil(H / 2**l)``), ``channels`` each."""

    def __init__(
        self,
        channels: int = 16,
        freeze_at: int = 0,
        weights: str | None = None,
        out_levels: tuple[int, ...] = _LEVELS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if weights is not None:
            raise ValueError("StridedToy has no pretrained weights")
        self.channels = channels
        self.freeze_at = freeze_at
        self.out_levels = tuple(out_levels)
        self.convs = [
            keras.layers.Conv2D(
                channels,
                4 if level == 2 else 3,
                strides=4 if level == 2 else 2,
                padding="same",
                activation="relu",
                name=f"conv{level}",
            )
            for level in _LEVELS
        ]

    def build(self, images_shape: Any) -> None:
        channels = images_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.channels
        self.freeze(self.freeze_at)

    def freeze(self, stages: int) -> None:
        for level, conv in zip(_LEVELS, self.convs):
            conv.trainable = level > stages

    def output_specs(self) -> dict[str, FeatureSpec]:
        return {f"C{level}": FeatureSpec(self.channels, 2**level) for level in self.out_levels}

    def call(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        features, x = {}, images
        for level, conv in zip(_LEVELS, self.convs):
            x = conv(x)
            if level in self.out_levels:
                features[f"C{level}"] = x
        return features


register_backbone_section("strided_toy", StridedToyConfig)


@keras.saving.register_keras_serializable(package="outside_test")
class LateralNeck(keras.layers.Layer):
    """``{"C2".."C5"}`` -> ``{"P2".."P6"}``: a 1x1 conv per level to ``channels``, P6 the
    stride-2 subsampling of P5 (no top-down path)."""

    def __init__(self, channels: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.laterals = [keras.layers.Conv2D(channels, 1, name=f"lateral{k}") for k in _LEVELS]

    def build(self, features_shape: dict[str, Any]) -> None:
        for level, lateral in zip(_LEVELS, self.laterals):
            lateral.build((None, None, None, features_shape[f"C{level}"][-1]))

    def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        pyramid = {f"P{k}": conv(features[f"C{k}"]) for k, conv in zip(_LEVELS, self.laterals)}
        pyramid["P6"] = pyramid["P5"][:, ::2, ::2]
        return pyramid

    def compute_output_shape(self, features_shape: dict[str, Any]) -> dict[str, tuple]:
        shapes = {f"P{k}": (*features_shape[f"C{k}"][:3], self.channels) for k in _LEVELS}
        batch, height, width, _ = shapes["P5"]
        half = [None if size is None else (size + 1) // 2 for size in (height, width)]
        shapes["P6"] = (batch, *half, self.channels)
        return shapes


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """The tiny config on the toy backbone (the ResNet fields of the tiny overrides left
    out), on 64..96 px images."""
    overrides = [
        o for o in tiny_overrides(tmp_path_factory.mktemp("unused")) if "model.backbone." not in o
    ]
    return load_config(
        None,
        [
            *overrides,
            "model.backbone={type: strided_toy, freeze_at: 2, strided_toy: {channels: 12}}",
            "model.box_head.score_threshold=0.0",
            "model.roi_align_implementation=tf",
            "data.min_size=[64]",
            "data.max_size=96",
        ],
    )


def _trained(model: keras.Model) -> tuple[keras.Model, dict, dict]:
    """``model`` after 10 Adam steps on the three-shapes image: (model, losses before,
    losses after)."""
    masks, classes, image = three_shapes()
    dataset = pipeline_batches([decoded_example(image, masks, classes)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = model.evaluate(dataset, verbose=0, return_dict=True)
    model.fit(dataset.repeat(), steps_per_epoch=10, epochs=1, verbose=0)
    return model, before, model.evaluate(dataset, verbose=0, return_dict=True)


@pytest.fixture(scope="module")
def backbone_model(config):
    keras.utils.set_random_seed(0)
    return _trained(build_mask_rcnn(config.model))


@pytest.fixture(scope="module")
def neck_model(config):
    """The factory's stages with the FPN replaced by ``LateralNeck``."""
    keras.utils.set_random_seed(0)
    stages = build_mask_rcnn(config.model)
    model = MaskRCNN(
        normalizer=stages.normalizer,
        backbone=stages.backbone,
        fpn=LateralNeck(24, name="fpn"),
        rpn=stages.rpn,
        roi_heads=stages.roi_heads,
        name="mask_rcnn",
    )
    return _trained(model)


def test_the_section_builds_the_backbone(config, backbone_model):
    assert config.model.backbone.strided_toy == StridedToyConfig(channels=12)
    model, before, after = backbone_model
    backbone = model.backbone
    assert isinstance(backbone, StridedToy) and backbone.channels == 12
    assert backbone.freeze_at == 2  # the generic field reaches the layer
    assert not backbone.convs[0].trainable and backbone.convs[1].trainable
    image = np.zeros((1, 64, 96, 3), np.float32)
    assert {k: v.shape[1:3] for k, v in backbone(image).items()} == {
        "C2": (16, 24),
        "C3": (8, 12),
        "C4": (4, 6),
        "C5": (2, 3),
    }
    assert np.isfinite(after["loss"]) and after["loss"] < before["loss"]


def test_the_neck_replaces_the_fpn(neck_model):
    model, before, after = neck_model
    assert isinstance(model.fpn, LateralNeck)
    pyramid = model.fpn(model.backbone(np.zeros((1, 64, 96, 3), np.float32)))
    expected = model.fpn.compute_output_shape({f"C{k}": (1, 64 >> k, 96 >> k, 12) for k in _LEVELS})
    assert {k: tuple(v.shape) for k, v in pyramid.items()} == expected
    assert expected["P6"] == (1, 1, 2, 24)
    assert np.isfinite(after["loss"]) and after["loss"] < before["loss"]


@pytest.mark.parametrize("which", ["backbone_model", "neck_model"])
def test_predicts_and_round_trips(which, config, request, tmp_path):
    model = request.getfixturevalue(which)[0]
    predictor = Predictor(model, config.data)
    image = np.random.default_rng(1).integers(0, 255, (100, 80, 3), dtype=np.uint8)
    features = predictor.features_for_image(image)
    detections = predictor.image_detections(predictor.predict_batch(features), 0)
    assert len(detections["boxes"]) > 0 and detections["masks"].shape[1:] == (100, 80)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert type(loaded.backbone) is type(model.backbone) and type(loaded.fpn) is type(model.fpn)
    assert_same_outputs(loaded.predict_step(features), model.predict_step(features))
