"""The RoIAlign layers under the mixed policies: a half-precision pyramid (what the FPN gives
under ``mixed_bfloat16`` / ``mixed_float16``) is pooled as it is, with no cast of the maps to
float32 and back; the pooled maps and their gradient keep the half dtype, boxes stay float32.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.layers import MultiLevelROIAlign, ROIAlign
from kmask.ops import multi_level_roi_align, roi_align
from tests.keras_harness import MIXED_POLICIES, global_dtype_policy

IMPLEMENTATIONS = ["custom", "tf"]
# One unit in the last place, relative: the layer's rounding and the float32 reference's
# rounding to the half dtype may land on adjacent numbers.
ULP = {"bfloat16": 2.0**-7, "float16": 2.0**-10}
BOXES = [[[0.0, 0.0, 100.0, 120.0], [10.0, 10.0, 40.0, 30.0], [4.0, 60.0, 20.0, 70.0]]]


def _half_casts(function, *args) -> list[str]:
    """Names of the Cast ops that read a 16-bit float tensor in ``function``'s graph."""
    graph = tf.function(function).get_concrete_function(*args).graph
    return [
        op.name
        for op in graph.get_operations()
        if op.type == "Cast" and op.get_attr("SrcT") in (tf.bfloat16, tf.float16)
    ]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_multilevel_layer_pools_a_half_pyramid_in_its_dtype(
    rng: np.random.Generator, policy: str, implementation: str
) -> None:
    half = keras.DTypePolicy(policy).compute_dtype
    pyramid32 = {
        f"P{k}": tf.constant(rng.normal(size=(2, 128 >> k, 128 >> k, 4)).astype(np.float32))
        for k in range(2, 6)
    }
    pyramid = {key: tf.cast(value, half) for key, value in pyramid32.items()}
    boxes = tf.constant(BOXES * 2)  # [2, 3, 4] float32, levels 2, 3 and 4
    with global_dtype_policy(policy):
        layer = MultiLevelROIAlign(5, sampling_ratio=2, implementation=implementation)
    with tf.GradientTape() as tape:
        tape.watch(pyramid)
        pooled = layer(pyramid, boxes)
    grads = tape.gradient(pooled, pyramid)
    assert pooled.dtype == half
    assert {key: grad.dtype for key, grad in grads.items()} == dict.fromkeys(pyramid, half)
    # The float32 op on the same (rounded) maps, then rounded: within one unit in the last
    # place (|pooled| < ~3; the absolute floor only covers values near zero).
    rounded = {key: tf.cast(value, tf.float32) for key, value in pyramid.items()}
    expected = multi_level_roi_align(rounded, boxes, 5, 2, implementation="custom").numpy()
    np.testing.assert_allclose(
        tf.cast(pooled, tf.float32).numpy(), expected, rtol=ULP[half], atol=1e-6
    )
    assert _half_casts(layer, pyramid, boxes) == []


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_single_level_layer_pools_bfloat16_in_bfloat16(
    rng: np.random.Generator, implementation: str
) -> None:
    features = tf.cast(rng.normal(size=(2, 16, 16, 3)), tf.bfloat16)
    boxes = tf.constant([[0.5, 1.0, 12.0, 20.0], [3.0, 2.0, 9.0, 7.0]])
    indices = tf.constant([1, 0])
    with global_dtype_policy("mixed_bfloat16"):
        layer = ROIAlign(3, spatial_scale=0.5, sampling_ratio=2, implementation=implementation)
    pooled = layer(features, boxes, indices)
    assert pooled.dtype == tf.bfloat16
    expected = roi_align(tf.cast(features, tf.float32), boxes, indices, 3, 0.5, 2).numpy()
    np.testing.assert_allclose(
        tf.cast(pooled, tf.float32).numpy(), expected, rtol=ULP["bfloat16"], atol=1e-6
    )
    assert _half_casts(layer, features, boxes, indices) == []
