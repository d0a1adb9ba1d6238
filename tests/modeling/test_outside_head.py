"""A head written outside kmask, registered with the instance-head contract alone: a per-RoI
"area" regressor (pooled features -> fc -> log-area of the RoI's object). With
``model.area_head: {}`` it is built, trains, predicts through ``Predictor`` (areas in
source pixels), exports to a SavedModel, round-trips through a ``.keras`` file, and the
converters refuse it by name. No kmask file knows it."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.config import PoolerConfig, layer_arguments
from kmask.evaluation import Predictor
from kmask.export import export_saved_model
from kmask.modeling import build_mask_rcnn
from kmask.modeling.roi_heads import (
    HeadContext,
    HeadOutput,
    InstanceHead,
    OutputKind,
    register_instance_head,
)
from kmask.modeling.roi_heads.pooled_head import PooledHead
from tests.keras_harness import assert_same_outputs
from tests.toy_data import decoded_example, pipeline_batches, three_shapes, tiny_config


@dataclasses.dataclass(frozen=True)
class AreaHeadConfig:
    """``model.area_head``: RoIAlign 7x7, one fc, the log-area."""

    pooler: PoolerConfig = PoolerConfig(7, sampling_ratio=2)
    fc_dim: int = 32
    loss_weight: float = 1.0


@register_instance_head
@keras.saving.register_keras_serializable(package="outside_test")
class AreaHead(PooledHead, InstanceHead):
    """Pooled RoI -> fc ReLU -> the log of its object's area in resized-image pixels.

    Call: ``(features, boxes [B, R, 4])`` -> ``[B, R]`` float32 log-areas.
    """

    section = "area_head"
    config_class = AreaHeadConfig
    outputs = (HeadOutput("detection_areas", OutputKind.AREA, "areas"),)
    loss_names = ("loss_area",)

    def __init__(
        self,
        pooler_resolution: int = 7,
        pooler_sampling_ratio: int = 2,
        pooler_aligned: bool = True,
        fc_dim: int = 32,
        loss_weight: float = 1.0,
        pooler_levels: tuple[int, int] | None = (2, 5),
        roi_align_implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            pooler_resolution,
            pooler_sampling_ratio,
            pooler_aligned,
            num_conv=0,
            conv_dim=1,  # no convs: the fc reads the pooled features
            norm="none",
            pooler_levels=pooler_levels,
            roi_align_implementation=roi_align_implementation,
            **kwargs,
        )
        self.fc_dim = fc_dim
        self.loss_weight = loss_weight
        self.fc = keras.layers.Dense(fc_dim, activation="relu", name="fc", dtype=self.dtype_policy)
        self.predictor = keras.layers.Dense(1, name="predictor", dtype=self.dtype_policy)

    @classmethod
    def from_section(cls, section: AreaHeadConfig, context: HeadContext) -> AreaHead:
        return cls(
            **layer_arguments(section),
            pooler_levels=context.pooler_levels,
            roi_align_implementation=context.roi_align_implementation,
            name=cls.section,
        )

    def build(self, features_shape: Any, boxes_shape: Any = None) -> None:
        channels = self.build_trunk(features_shape)
        self.fc.build((None, self.pooler_resolution**2 * channels))
        self.predictor.build((None, self.fc_dim))

    def call(self, features: Any, boxes: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x, batch, num = self.trunk(features, boxes, training)
        x = self.predictor(self.fc(tf.reshape(x, [batch * num, -1])))
        return tf.reshape(tf.cast(x, tf.float32), [batch, num])

    def compute_losses(self, features, rois, classes, matched_index, targets, training=None):
        predicted = self(features, rois, training=training)
        boxes = tf.gather(tf.cast(targets["gt_boxes"], tf.float32), matched_index, batch_dims=1)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        foreground = tf.cast(classes >= 0, tf.float32)
        error = tf.square(predicted - tf.math.log(tf.maximum(area, 1.0))) * foreground
        loss = tf.reduce_sum(error) / tf.maximum(tf.reduce_sum(foreground), 1.0)
        return {"loss_area": self.loss_weight * loss}

    def inference(self, features, detections):
        areas = tf.exp(self(features, detections["detection_boxes"]))
        valid = tf.range(tf.shape(areas)[1])[None, :] < detections["num_detections"][:, None]
        return {"detection_areas": tf.where(valid, areas, 0.0)}

    def compute_output_shape(self, features_shape: Any, boxes_shape: Any) -> tuple:
        return tuple(boxes_shape[:2])


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny_config(
        tmp_path_factory.mktemp("unused"),
        "model.area_head={fc_dim: 16}",
        "model.box_head.score_threshold=0.0",
        "model.roi_align_implementation=tf",
        "data.min_size=[64]",
        "data.max_size=96",
    )


@pytest.fixture(scope="module")
def trained(config):
    """The model after a few steps on the three-shapes image: (model, losses before,
    losses after)."""
    keras.utils.set_random_seed(0)
    model = build_mask_rcnn(config.model)
    masks, classes, image = three_shapes()
    dataset = pipeline_batches([decoded_example(image, masks, classes)])
    # Only the area head trains: its loss, measured on fixed features, must fall (10 Adam
    # steps of the whole model move the features it reads more than it learns).
    for layer in (model.backbone, model.fpn, model.rpn, *model.roi_heads.instance_heads[:-1]):
        layer.trainable = False
    model.roi_heads.box_head.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = area_loss_on_ground_truth(model, dataset)
    model.fit(dataset.repeat(), steps_per_epoch=10, epochs=1, verbose=0)
    return model, before, area_loss_on_ground_truth(model, dataset)


def area_loss_on_ground_truth(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """The area head's loss with the ground-truth boxes as its RoIs: the same RoIs before
    and after training (the model's own proposals change as its RPN learns)."""
    features, targets = next(iter(dataset))
    images = model.normalizer(features["images"], features["image_size"])
    pyramid = model.fpn(model.backbone(images))
    classes = targets["gt_classes"]
    matched = tf.broadcast_to(tf.range(tf.shape(classes)[1]), tf.shape(classes))
    head = model.roi_heads.instance_heads[-1]
    losses = head.compute_losses(pyramid, targets["gt_boxes"], classes, matched, targets)
    return float(losses["loss_area"])


def test_the_section_builds_the_head_and_its_loss_trains(config, trained):
    model, before, after = trained
    assert list(config.model.instance_heads) == ["mask_head", "area_head"]
    assert config.model.instance_heads["area_head"].fc_dim == 16
    head = model.roi_heads.instance_heads[-1]
    assert isinstance(head, AreaHead) and head.name == "area_head" and head.fc_dim == 16
    assert model.loss_names[-2:] == ("loss_mask", "loss_area")
    assert np.isfinite(after) and after < before


def _image() -> np.ndarray:
    """A 100x80 image (resized to 80x64 by the tiny config)."""
    return np.random.default_rng(1).integers(0, 255, (100, 80, 3), dtype=np.uint8)


def test_predictor_maps_areas_to_source_pixels(config, trained):
    model = trained[0]
    predictor = Predictor(model, config.data)
    outputs = predictor.predict_batch(predictor.features_for_image(_image()))
    count = int(outputs["num_detections"][0])
    assert count > 0 and outputs["detection_areas"].shape == (1, 20)
    assert not outputs["detection_areas"][0, count:].any()
    detections = predictor.image_detections(outputs, 0)
    resized_h, resized_w = outputs["image_size"][0]
    scale = np.float32(100 / resized_h) * np.float32(80 / resized_w)
    np.testing.assert_allclose(
        detections["areas"], outputs["detection_areas"][0, :count] * scale, rtol=1e-6
    )
    assert detections["areas"].dtype == np.float32 and (detections["areas"] > 0).all()


def test_saved_model_exports_the_areas(config, trained, tmp_path):
    model = trained[0]
    path = export_saved_model(model, tmp_path / "export", config.data, input_type="image_tensor")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = {k: v.numpy() for k, v in serve(image_tensor=tf.constant(_image()[None])).items()}
    predictor = Predictor(model, config.data)
    want = predictor.image_detections(
        predictor.predict_batch(predictor.features_for_image(_image())), 0
    )
    count = int(got["num_detections"][0])
    assert count == len(want["areas"]) > 0
    np.testing.assert_allclose(got["detection_areas"][0, :count], want["areas"], rtol=1e-3)
    assert not got["detection_areas"][0, count:].any()


def test_keras_file_round_trip(config, trained, tmp_path):
    model = trained[0]
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert isinstance(loaded.roi_heads.instance_heads[-1], AreaHead)
    features = Predictor(model, config.data).features_for_image(_image())
    expected = model.predict_step(features)
    assert "detection_areas" in expected
    assert_same_outputs(loaded.predict_step(features), expected)


def test_converters_refuse_the_head_by_name():
    torch = pytest.importorskip("torch")
    from kmask.convert import TorchvisionConverter
    from kmask.errors import ConversionError
    from tests.convert.torch_models import random_torchvision_model

    arch = "maskrcnn_resnet50_fpn"
    values = TorchvisionConverter.ARCHITECTURES[arch]
    with_area = {**values, "model": {**values["model"], "area_head": {}}}

    class AreaConverter(TorchvisionConverter):
        ARCHITECTURES = {"maskrcnn_with_area": with_area}

    with torch.no_grad():
        state = {k: v.numpy() for k, v in random_torchvision_model(arch).state_dict().items()}
    with pytest.raises(ConversionError, match=r"instance head 'area_head' \(AreaHead\) has no "):
        AreaConverter("maskrcnn_with_area").convert(state, "model.pth")
