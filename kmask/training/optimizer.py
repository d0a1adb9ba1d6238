"""``build_optimizer``: the papers' SGD for a ``TrainConfig`` and a global batch size;
``optimizer_step``: the step a model's optimizer has taken."""

from __future__ import annotations

import keras

from kmask.config import TrainConfig
from kmask.training.coupled_weight_decay_sgd import CoupledWeightDecaySGD
from kmask.training.warmup_step_schedule import WarmupStepSchedule


def scaled_learning_rate(config: TrainConfig, global_batch_size: int) -> float:
    """``base_learning_rate * global_batch_size / reference_batch_size`` (linear scaling)."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    return config.base_learning_rate * global_batch_size / config.reference_batch_size


def build_optimizer(config: TrainConfig, global_batch_size: int) -> CoupledWeightDecaySGD:
    """SGD with momentum, L2 weight decay (not on biases / norm parameters), optional
    global-norm clipping, and the warmup + step schedule at the linearly scaled rate.

    Args:
      config: the ``train`` section.
      global_batch_size: images per step over all replicas.
    """
    schedule = WarmupStepSchedule(
        learning_rate=scaled_learning_rate(config, global_batch_size),
        boundaries=config.lr_steps,
        decay_factor=config.lr_decay_factor,
        warmup_steps=config.warmup_steps,
        warmup_factor=config.warmup_factor,
    )
    return CoupledWeightDecaySGD(
        learning_rate=schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        clip_norm=config.grad_clip_norm,
    )


def optimizer_step(model: keras.Model) -> int:
    """Optimizer steps taken so far (the training step counter checkpoints, logs and the
    schedule use)."""
    return int(model.optimizer.iterations.numpy())
