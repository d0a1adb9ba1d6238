"""FPN: shapes, P6 subsampling, a hand-checked top-down sum, config, parameter count, init."""

import keras
import numpy as np
import pytest

from kmask.modeling.necks.fpn import FPN
from tests.keras_harness import assert_mixed_precision, assert_round_trip

RESNET_CHANNELS = {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}


def _backbone_features(height: int, width: int, channels: dict[str, int], seed: int = 0) -> dict:
    """Random C2..C5 of the sizes ResNet gives for a ``height x width`` image (ceil(H / s))."""
    rng = np.random.default_rng(seed)
    return {
        f"C{level}": rng.normal(
            size=(1, -(-height // 2**level), -(-width // 2**level), channels[f"C{level}"])
        ).astype("float32")
        for level in range(2, 6)
    }


@pytest.mark.parametrize(("height", "width"), [(64, 64), (128, 96), (100, 70)])
def test_output_shapes(height, width):
    fpn = FPN()
    features = _backbone_features(height, width, RESNET_CHANNELS)
    pyramid = fpn(features)
    assert list(pyramid) == ["P2", "P3", "P4", "P5", "P6"]
    expected = {
        f"P{level}": (1, -(-height // 2**level), -(-width // 2**level), 256)
        for level in range(2, 7)
    }
    assert {k: tuple(v.shape) for k, v in pyramid.items()} == expected
    shapes = {k: v.shape for k, v in features.items()}
    assert fpn.compute_output_shape(shapes) == expected


def test_symbolic_call_with_unknown_sizes():
    inputs = {k: keras.Input((None, None, c)) for k, c in RESNET_CHANNELS.items()}
    pyramid = FPN(num_channels=16)(inputs)
    assert {k: tuple(v.shape) for k, v in pyramid.items()} == {
        f"P{level}": (None, None, None, 16) for level in range(2, 7)
    }


def test_p6_is_stride_two_subsampling_of_p5():
    pyramid = FPN(num_channels=8)(_backbone_features(200, 136, RESNET_CHANNELS))
    p5 = keras.ops.convert_to_numpy(pyramid["P5"])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pyramid["P6"]), p5[:, ::2, ::2])


def test_top_down_sum_by_hand():
    """With identity laterals and identity-centred 3x3 convs, P_l = C_l + up2(P_{l+1})."""
    channels = 3
    features = _backbone_features(28, 20, dict.fromkeys(RESNET_CHANNELS, channels), seed=3)
    fpn = FPN(num_channels=channels)
    fpn.build({k: v.shape for k, v in features.items()})
    identity_3x3 = np.zeros((3, 3, channels, channels), "float32")
    identity_3x3[1, 1] = np.eye(channels)
    for conv in fpn.lateral_convs:
        conv.set_weights([np.eye(channels, dtype="float32")[None, None], np.zeros(channels)])
    for conv in fpn.output_convs:
        conv.set_weights([identity_3x3, np.zeros(channels)])
    pyramid = fpn(features)

    # Sizes 7x5, 4x3, 2x2, 1x1: every upsampling is cropped on at least one axis.
    expected = {"P5": features["C5"]}
    for level in (4, 3, 2):
        lateral = features[f"C{level}"]
        upper = expected[f"P{level + 1}"].repeat(2, axis=1).repeat(2, axis=2)
        expected[f"P{level}"] = lateral + upper[:, : lateral.shape[1], : lateral.shape[2]]
    expected["P6"] = expected["P5"][:, ::2, ::2]
    for level, value in expected.items():
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(pyramid[level]), value, rtol=1e-6, atol=1e-6
        )
    # e.g. the top-left pixel of P2 sums the top-left pixels of C2..C5.
    corner = sum(features[f"C{level}"][0, 0, 0] for level in range(2, 6))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pyramid["P2"])[0, 0, 0], corner, 1e-6)


def test_parameter_count_for_resnet50_channels():
    fpn = FPN()
    fpn.build({k: (None, None, None, c) for k, c in RESNET_CHANNELS.items()})
    lateral = (256 + 512 + 1024 + 2048) * 256 + 4 * 256
    output = 4 * (256 * 256 * 9 + 256)
    assert fpn.count_params() == lateral + output == 3_344_384
    assert len(fpn.trainable_weights) == 16


def test_normalized_variant_has_bias_free_convs_and_a_norm_after_each():
    """torchvision's v2 FPN: conv without bias + BatchNorm for every lateral and output."""
    fpn = FPN(norm="bn")
    fpn.build({k: (None, None, None, c) for k, c in RESNET_CHANNELS.items()})
    kernels = (256 + 512 + 1024 + 2048) * 256 + 4 * 256 * 256 * 9
    assert fpn.count_params() == kernels + 8 * 4 * 256  # gamma, beta, mean, variance
    assert all(conv.bias is None for conv in fpn.lateral_convs + fpn.output_convs)
    features = _backbone_features(64, 64, RESNET_CHANNELS)
    plain = {key: value.numpy() for key, value in fpn(features).items()}
    # In inference BN with its initial statistics is y = x / sqrt(1 + eps): check P5 by hand.
    lateral = features["C5"] @ fpn.lateral_convs[-1].kernel.numpy()[0, 0] / np.sqrt(1 + 1e-5)
    expected = fpn.output_norms[-1](fpn.output_convs[-1](lateral)).numpy()
    np.testing.assert_allclose(plain["P5"], expected, rtol=1e-4, atol=1e-5)
    assert_round_trip(fpn, features)


def test_initialization_kaiming_uniform_a1_zero_bias():
    fpn = FPN()
    fpn.build({k: (None, None, None, c) for k, c in RESNET_CHANNELS.items()})
    for conv, fan_in in [(fpn.lateral_convs[3], 2048), (fpn.output_convs[0], 256 * 9)]:
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in conv.weights)
        bound = np.sqrt(3.0 / fan_in)
        assert np.abs(kernel).max() <= bound * (1 + 1e-6)  # float32 samples, float64 bound
        assert np.abs(kernel).max() > 0.95 * bound  # uniform over the full range
        np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.05)
        np.testing.assert_array_equal(bias, 0.0)


def test_serialization_round_trip():
    fpn = FPN(num_channels=16, min_level=3, max_level=7, name="neck")
    features = _backbone_features(64, 96, RESNET_CHANNELS)
    assert list(fpn(features)) == ["P3", "P4", "P5", "P6", "P7"]
    config = fpn.get_config()
    assert {k: config[k] for k in ("num_channels", "min_level", "max_level")} == {
        "num_channels": 16,
        "min_level": 3,
        "max_level": 7,
    }
    assert_round_trip(fpn, features)


def test_mixed_precision():
    features = _backbone_features(64, 64, RESNET_CHANNELS)
    reference = FPN(num_channels=32)
    expected = reference(features)

    def make_layer():
        mixed = FPN(num_channels=32)
        mixed.build({k: v.shape for k, v in features.items()})
        mixed.set_weights(reference.get_weights())
        return mixed

    # float32 weights; every level in the compute dtype (no float32 output).
    runs = assert_mixed_precision(make_layer, features, float32_outputs=())
    for run in runs.values():
        for level in expected:
            ref = keras.ops.convert_to_numpy(expected[level])
            out = keras.ops.convert_to_numpy(run.outputs[level]).astype("float32")
            atol = run.tolerance(1e-2) * np.abs(ref).max()
            np.testing.assert_allclose(out, ref, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "bad", [{"min_level": 1}, {"min_level": 6}, {"max_level": 4}, {"num_channels": 0}]
)
def test_invalid_arguments(bad):
    with pytest.raises(ValueError):
        FPN(**bad)


def test_missing_backbone_level_is_named():
    features = _backbone_features(64, 64, RESNET_CHANNELS)
    del features["C3"]
    with pytest.raises(ValueError, match="C3"):
        FPN(num_channels=8)(features)
