"""WarmupStepSchedule, the linear scaling rule and CoupledWeightDecaySGD against hand
computations (the PyTorch / Caffe SGD update written out in NumPy)."""

import keras
import numpy as np
import pytest

from kmask.config import ConfigError, load_config
from kmask.training import (
    CoupledWeightDecaySGD,
    WarmupStepSchedule,
    build_optimizer,
    scaled_learning_rate,
)


def test_schedule_values_by_hand():
    schedule = WarmupStepSchedule(
        0.02, boundaries=(60, 80), decay_factor=0.1, warmup_steps=10, warmup_factor=0.001
    )
    expected = {
        0: 0.02 * 0.001,
        5: 0.02 * (0.001 + 0.999 * 0.5),
        10: 0.02,
        59: 0.02,
        60: 0.002,
        79: 0.002,
        80: 0.0002,
        10_000: 0.0002,
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-6), step


def test_schedule_serialization_round_trip():
    schedule = WarmupStepSchedule(0.01, boundaries=(3, 7), warmup_steps=2, warmup_factor=0.1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupStepSchedule)
    assert restored.get_config() == schedule.get_config()
    for step in range(10):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))


def test_schedule_rejects_unsorted_boundaries():
    with pytest.raises(ValueError, match="increasing"):
        WarmupStepSchedule(0.1, boundaries=(5, 3))


def test_linear_scaling_rule_and_config_validation():
    config = load_config(None, ["train.base_learning_rate=0.02", "train.reference_batch_size=16"])
    assert scaled_learning_rate(config.train, 16) == pytest.approx(0.02)
    assert scaled_learning_rate(config.train, 2) == pytest.approx(0.0025)
    optimizer = build_optimizer(config.train, 8)
    assert float(optimizer.learning_rate_schedule(10**6)) == pytest.approx(0.01 * 0.01)
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(None, ["train.mixed_precision=float16"])
    with pytest.raises(ConfigError, match="train.lr_steps"):
        load_config(None, ["train.lr_steps=[80000,60000]"])


def _numpy_sgd(weights, grads_per_step, lr, momentum, weight_decay, decay_mask, clip=None):
    """PyTorch-style SGD with coupled L2 (constant lr): v = mu v + g'; w -= lr v."""
    weights = [w.astype(np.float64).copy() for w in weights]
    velocity = [np.zeros_like(w) for w in weights]
    for grads in grads_per_step:
        grads = [g.astype(np.float64) for g in grads]
        if clip is not None:
            norm = np.sqrt(sum(float((g**2).sum()) for g in grads))
            grads = [g * min(1.0, clip / norm) for g in grads]
        for i, (w, g) in enumerate(zip(weights, grads)):
            g = g + weight_decay * w if decay_mask[i] else g
            velocity[i] = momentum * velocity[i] + g
            weights[i] = w - lr * velocity[i]
    return weights


@pytest.mark.parametrize("clip", [None, 0.5])
def test_coupled_weight_decay_sgd_matches_reference(rng, clip):
    layer = keras.layers.Dense(3)
    norm = keras.layers.GroupNormalization(groups=1)
    layer.build((None, 4))
    norm.build((None, 3))
    variables = [layer.kernel, layer.bias, norm.gamma, norm.beta]
    start = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
    for variable, value in zip(variables, start):
        variable.assign(value)
    steps = [[rng.normal(size=v.shape).astype(np.float32) for v in variables] for _ in range(3)]
    optimizer = CoupledWeightDecaySGD(
        learning_rate=0.1, momentum=0.9, weight_decay=0.01, clip_norm=clip
    )
    optimizer.build(variables)
    for grads in steps:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    expected = _numpy_sgd(
        start, steps, 0.1, 0.9, 0.01, decay_mask=[True, False, False, False], clip=clip
    )
    for variable, reference in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), reference, rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations.numpy()) == 3


def test_optimizer_serialization_round_trip():
    optimizer = build_optimizer(load_config(None, ["train.grad_clip_norm=2.0"]).train, 4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, CoupledWeightDecaySGD)
    assert restored.l2_weight_decay == pytest.approx(1e-4)
    assert restored.clip_norm == pytest.approx(2.0)
    assert restored.learning_rate_schedule.get_config() == (
        optimizer.learning_rate_schedule.get_config()
    )
    with pytest.raises(ValueError, match="clip_norm"):
        CoupledWeightDecaySGD(global_clipnorm=1.0)
