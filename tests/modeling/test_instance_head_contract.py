"""The instance-head contract: the built-in heads' declarations (targets, outputs, losses,
class-dependent layers, converter mappings), the pixel mapping of each output kind in NumPy
and TensorFlow, and the registry's refusals."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.modeling import KeypointHead, MaskHead
from kmask.modeling.roi_heads.instance_head import (
    ClassRows,
    HeadOutput,
    InstanceHead,
    OutputKind,
    head_outputs,
    instance_head_class,
    instance_heads,
    register_instance_head,
    target_keys,
)
from kmask.training.weight_transfer import class_dependent_layers


def test_built_in_heads_are_registered_with_their_declarations():
    heads = instance_heads()
    assert heads["mask_head"] is MaskHead and heads["keypoint_head"] is KeypointHead
    assert list(heads)[:2] == ["mask_head", "keypoint_head"]
    assert instance_head_class("keypoint_head") is KeypointHead
    with pytest.raises(KeyError, match="no instance head registered for model.nose_head"):
        instance_head_class("nose_head")
    assert target_keys()[:2] == ("gt_boxes", "gt_classes") and target_keys()[-1] == "seed"
    assert {"gt_masks", "gt_keypoints"} <= set(target_keys())
    outputs = head_outputs()
    assert outputs["detection_masks"].kind is OutputKind.BOX_FRAME
    assert outputs["detection_masks"].pasted_key == "detection_full_masks"
    assert outputs["detection_keypoints"] == HeadOutput(
        "detection_keypoints", OutputKind.POINTS, "keypoints"
    )
    assert MaskHead.loss_names == ("loss_mask",) and KeypointHead.loss_names == ("loss_keypoint",)


def test_class_dependent_layers_come_from_the_heads():
    layers = class_dependent_layers()
    assert {name: layers[name] for name in list(layers)[:4]} == {
        "box_head/cls_score": ClassRows(1, True),
        "box_head/bbox_pred": ClassRows(4, False),
        "mask_head/predictor": ClassRows(1, False),
        "keypoint_head/deconv": None,
    }


@pytest.mark.parametrize("converter", ["torchvision", "detectron2"])
def test_converter_mappings_name_every_weight_of_the_heads(converter):
    pyramid = {f"P{k}": keras.random.normal((1, 64 >> k, 64 >> k, 8)) for k in range(2, 6)}
    boxes = np.array([[[0, 0, 32, 32]]], "float32")
    for head in (
        MaskHead(3, conv_dim=32, num_conv=2, norm="gn", roi_align_implementation="tf"),
        KeypointHead(4, conv_dim=8, num_conv=2, roi_align_implementation="tf"),
    ):
        head(pyramid, boxes)
        sources = head.weight_sources(converter)
        mapped = {id(w) for source in sources for w in source.layer.weights}
        assert mapped == {id(w) for w in head.weights}
        assert len({source.key for source in sources}) == len(sources)
        assert head.weight_sources("mmdetection") is None
    assert [s.class_rows for s in MaskHead(3).weight_sources(converter) if s.class_rows]
    assert not any(s.class_rows for s in KeypointHead(4).weight_sources(converter))


@pytest.mark.parametrize("backend", ["numpy", "tensorflow"])
def test_output_kinds_map_to_source_pixels(backend):
    """One image (scalar scales) and a batch (``[B, 1]`` scales) give the same numbers:
    points scale x by the width factor and y by the height factor and keep the score, areas
    scale by the product, box-frame maps are kept."""
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 50, (2, 3, 4, 3)).astype(np.float32)
    areas = rng.uniform(0, 500, (2, 3)).astype(np.float32)
    maps = rng.uniform(0, 1, (2, 3, 5, 5)).astype(np.float32)
    scale_y = np.array([[1.5], [0.5]], np.float32)
    scale_x = np.array([[2.0], [0.25]], np.float32)
    convert = np.asarray if backend == "numpy" else tf.constant

    def mapped(kind: OutputKind, values: np.ndarray, sy, sx) -> np.ndarray:
        output = HeadOutput("detection_x", kind, "x")
        return np.asarray(output.to_source(convert(values), convert(sy), convert(sx)))

    want_points = points * np.stack([scale_x, scale_y, np.ones_like(scale_x)], -1)[:, :, None]
    np.testing.assert_array_equal(mapped(OutputKind.POINTS, points, scale_y, scale_x), want_points)
    np.testing.assert_array_equal(
        mapped(OutputKind.AREA, areas, scale_y, scale_x), areas * (scale_y * scale_x)
    )
    np.testing.assert_array_equal(mapped(OutputKind.BOX_FRAME, maps, scale_y, scale_x), maps)
    for image in (0, 1):
        sy, sx = scale_y[image, 0], scale_x[image, 0]
        np.testing.assert_array_equal(
            mapped(OutputKind.POINTS, points[image], sy, sx), want_points[image]
        )
        np.testing.assert_array_equal(
            mapped(OutputKind.AREA, areas[image], sy, sx), areas[image] * (sy * sx)
        )


def test_registry_refuses_clashes_and_non_heads():
    class NotALayer(InstanceHead):
        section = "not_a_layer"

    with pytest.raises(ValueError, match="keras Layer and an InstanceHead"):
        register_instance_head(NotALayer)

    @dataclasses.dataclass(frozen=True)
    class Section:
        width: int = 1

    class Runs:
        def compute_losses(self, features, rois, classes, matched_index, targets, training=None):
            return {}

        def inference(self, features, detections):
            return {}

    class NoInference(keras.layers.Layer, InstanceHead):
        section = "no_inference"
        config_class = Section
        compute_losses = Runs.compute_losses

    with pytest.raises(ValueError, match="NoInference: an instance head implements inference"):
        register_instance_head(NoInference)
    assert "no_inference" not in instance_heads()

    class SecondMaskHead(Runs, keras.layers.Layer, InstanceHead):
        section = "mask_head"
        config_class = Section

    with pytest.raises(ValueError, match="the section 'mask_head' is MaskHead's"):
        register_instance_head(SecondMaskHead)

    class MaskTwin(Runs, keras.layers.Layer, InstanceHead):
        section = "mask_twin"
        config_class = Section
        outputs = (HeadOutput("detection_masks", OutputKind.BOX_FRAME, "twin_masks"),)

    with pytest.raises(ValueError, match="detection_masks already MaskHead's"):
        register_instance_head(MaskTwin)
    assert "mask_twin" not in instance_heads()
    assert register_instance_head(MaskHead) is MaskHead  # again: a no-op
