"""ROIAlign and MultiLevelROIAlign Keras layers: outputs, shapes, serialization, jit flag."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.layers import MultiLevelROIAlign, ROIAlign
from kmask.ops import multi_level_roi_align
from tests.keras_harness import assert_mixed_precision, assert_round_trip
from tests.ops.roi_align_reference import roi_align_reference


def test_roi_align_layer_matches_reference_and_round_trips(rng: np.random.Generator) -> None:
    features = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    boxes = np.array([[0.5, 1.0, 12.0, 20.0], [3.0, 2.0, 9.0, 7.0]], np.float32)
    indices = np.array([1, 0], np.int32)
    layer = ROIAlign((3, 4), spatial_scale=0.5, sampling_ratio=2, aligned=False)
    out = layer(features, boxes, indices)
    np.testing.assert_allclose(
        out.numpy(), roi_align_reference(features, boxes, indices, (3, 4), 0.5, 2, False), atol=1e-5
    )
    assert layer.compute_output_shape((2, 9, 11, 3), (2, 4), (2,)) == (2, 3, 4, 3)
    assert_round_trip(layer, features, boxes, indices)


@pytest.mark.parametrize("implementation, jit", [("custom", False), ("tf", True)])
def test_supports_jit_follows_implementation(implementation: str, jit: bool) -> None:
    assert ROIAlign(7, implementation=implementation).supports_jit is jit
    assert MultiLevelROIAlign(7, implementation=implementation).supports_jit is jit


def test_environment_variable_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMASK_ROI_ALIGN", "tf")
    assert MultiLevelROIAlign(7).supports_jit
    monkeypatch.setenv("KMASK_ROI_ALIGN", "custom")
    assert not MultiLevelROIAlign(7).supports_jit
    monkeypatch.setenv("KMASK_ROI_ALIGN", "fast")
    with pytest.raises(ValueError, match="KMASK_ROI_ALIGN"):
        MultiLevelROIAlign(7)


def test_multilevel_layer_ignores_p6_and_keeps_float32_boxes(rng: np.random.Generator) -> None:
    pyramid = {
        f"P{k}": tf.constant(rng.normal(size=(1, 128 >> k, 128 >> k, 4)).astype(np.float32))
        for k in range(2, 7)
    }
    boxes = tf.constant([[[0.0, 0.0, 100.0, 120.0], [10.0, 10.0, 40.0, 30.0]]])
    expected = multi_level_roi_align({k: v for k, v in pyramid.items() if k != "P6"}, boxes, 5)
    # Under the mixed policies, float32 features give float32 output, exactly the op's.
    runs = assert_mixed_precision(lambda: MultiLevelROIAlign(5), pyramid, boxes)
    for run in runs.values():
        np.testing.assert_allclose(run.outputs.numpy(), expected.numpy(), atol=1e-6)
    layer = runs["mixed_float16"].layer
    assert layer.compute_output_shape({k: v.shape for k, v in pyramid.items()}, (1, 2, 4)) == (
        1,
        2,
        5,
        5,
        4,
    )
    config = layer.get_config()
    assert config["output_size"] == 5 and config["max_level"] == 5
    assert layer.output_size == (5, 5)
    assert_round_trip(layer, pyramid, boxes)
    with pytest.raises(ValueError, match="P5"):
        layer({"P2": pyramid["P2"]}, boxes)


def test_multilevel_layer_in_a_functional_model(rng: np.random.Generator, tmp_path) -> None:
    inputs = {f"P{k}": keras.Input((64 >> k, 64 >> k, 2), name=f"P{k}") for k in range(2, 6)}
    boxes = keras.Input((3, 4), name="boxes")
    pooled = MultiLevelROIAlign(4)(inputs, boxes)
    model = keras.Model({**inputs, "boxes": boxes}, pooled)
    feed = {
        f"P{k}": rng.normal(size=(2, 64 >> k, 64 >> k, 2)).astype(np.float32) for k in range(2, 6)
    }
    feed["boxes"] = np.tile(
        np.array([[[1, 2, 30, 40], [0, 0, 63, 63], [5, 5, 9, 9]]], np.float32), (2, 1, 1)
    )
    out = model(feed)
    assert out.shape == (2, 3, 4, 4, 2)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(restored(feed).numpy(), out.numpy())


def test_the_stage_parts_keep_their_0_1_names_in_kmask_layers():
    """``from kmask.layers import ROISampler`` (kmask 0.1) gives the class that lives with
    its stage now, and other names are still errors."""
    import kmask.layers
    from kmask.layers import AnchorGenerator, ProposalGenerator, ROISampler, RPNTargetAssigner
    from kmask.modeling import proposals, roi_heads

    assert AnchorGenerator is proposals.AnchorGenerator
    assert ProposalGenerator is proposals.ProposalGenerator
    assert RPNTargetAssigner is proposals.RPNTargetAssigner
    assert ROISampler is roi_heads.ROISampler
    with pytest.raises(AttributeError, match="has no attribute 'RPN'"):
        kmask.layers.RPN  # noqa: B018
