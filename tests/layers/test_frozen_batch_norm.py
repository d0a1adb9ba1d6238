"""FrozenBatchNorm: NumPy formula, never-updating statistics, keras BN compatibility."""

import keras
import numpy as np
import pytest

from kmask.layers import FrozenBatchNorm
from tests.keras_harness import assert_mixed_precision, assert_round_trip

CHANNELS = 6


def _random_stats(rng: np.random.Generator) -> list[np.ndarray]:
    gamma = rng.uniform(0.5, 1.5, CHANNELS).astype("float32")
    beta = rng.normal(0.0, 1.0, CHANNELS).astype("float32")
    mean = rng.normal(0.0, 2.0, CHANNELS).astype("float32")
    variance = rng.uniform(0.1, 3.0, CHANNELS).astype("float32")
    return [gamma, beta, mean, variance]


def _numpy_frozen_bn(x: np.ndarray, stats: list[np.ndarray], epsilon: float) -> np.ndarray:
    gamma, beta, mean, variance = (s.astype("float64") for s in stats)
    return gamma * (x.astype("float64") - mean) / np.sqrt(variance + epsilon) + beta


@pytest.fixture
def layer_and_stats():
    rng = np.random.default_rng(0)
    layer = FrozenBatchNorm(epsilon=1e-3)
    layer.build((None, None, None, CHANNELS))
    stats = _random_stats(rng)
    layer.set_weights(stats)
    x = rng.normal(0.0, 3.0, (2, 5, 4, CHANNELS)).astype("float32")
    return layer, stats, x


def test_matches_numpy_formula(layer_and_stats):
    layer, stats, x = layer_and_stats
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), _numpy_frozen_bn(x, stats, 1e-3), rtol=1e-5, atol=1e-5
    )


def test_training_true_neither_uses_batch_stats_nor_updates(layer_and_stats):
    layer, stats, x = layer_and_stats
    inference = keras.ops.convert_to_numpy(layer(x, training=False))
    training = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_array_equal(training, inference)
    for before, after in zip(stats, layer.get_weights()):
        np.testing.assert_array_equal(before, after)


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_all_weights_non_trainable_even_when_layer_trainable(layer_and_stats):
    layer, _, x = layer_and_stats
    layer.trainable = True
    assert layer.trainable_weights == []
    assert [w.name for w in layer.non_trainable_weights] == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    ]
    # A fit step in training mode leaves every weight unchanged.
    model = keras.Sequential([keras.Input((5, 4, CHANNELS)), layer])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    before = layer.get_weights()
    model.fit(x, np.zeros_like(x), epochs=1, batch_size=2, verbose=0)
    for old, new in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_weights_interchangeable_with_keras_batch_normalization():
    rng = np.random.default_rng(1)
    bn = keras.layers.BatchNormalization(epsilon=1.001e-5)
    bn.build((None, 3, 3, CHANNELS))
    bn.set_weights(_random_stats(rng))
    frozen = FrozenBatchNorm(epsilon=1.001e-5)
    frozen.build((None, 3, 3, CHANNELS))
    assert [w.shape for w in frozen.weights] == [w.shape for w in bn.weights]
    assert [w.name for w in frozen.weights] == [w.name for w in bn.weights]
    frozen.set_weights(bn.get_weights())
    x = rng.normal(0.0, 3.0, (2, 3, 3, CHANNELS)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(frozen(x)),
        keras.ops.convert_to_numpy(bn(x, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_mixed_precision_float32_weights_compute_dtype_output(layer_and_stats):
    _, stats, x = layer_and_stats

    def make_layer():
        layer = FrozenBatchNorm(epsilon=1e-3)
        layer.build((None, None, None, CHANNELS))
        layer.set_weights(stats)
        return layer

    # float32 weights; the output in the compute dtype (no float32 output).
    runs = assert_mixed_precision(make_layer, x, float32_outputs=())
    for run in runs.values():
        tolerance = run.tolerance(1e-2)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(run.outputs).astype("float64"),
            _numpy_frozen_bn(x, stats, 1e-3),
            rtol=tolerance,
            atol=tolerance,
        )


def test_serialization_round_trip(layer_and_stats):
    layer, _, x = layer_and_stats
    assert layer.get_config()["epsilon"] == 1e-3
    assert_round_trip(layer, x)
    assert layer.compute_output_shape((2, 5, 4, CHANNELS)) == (2, 5, 4, CHANNELS)
