"""Learning rate schedule of the papers: linear warmup, then piecewise-constant steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kmask")
class WarmupStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``lr(step) = learning_rate * warmup(step) * decay_factor ** (#boundaries <= step)``.

    ``warmup(step) = warmup_factor + (1 - warmup_factor) * step / warmup_steps`` for
    ``step < warmup_steps`` and 1 afterwards (Goyal et al. 2017, the detectron "linear"
    warmup), so the first step runs at ``learning_rate * warmup_factor`` and step
    ``warmup_steps`` at the full rate. ``step`` is the optimizer's 0-based iteration count:
    the number of updates already applied.

    Args:
      learning_rate: rate after warmup and before the first boundary (already scaled for
        the global batch size).
      boundaries: increasing steps at which the rate is multiplied by ``decay_factor``.
      decay_factor: multiplier at each boundary (0.1 in the papers).
      warmup_steps: length of the linear warmup; 0 = none.
      warmup_factor: fraction of ``learning_rate`` at step 0.
    """

    def __init__(
        self,
        learning_rate: float,
        boundaries: Sequence[int] = (),
        decay_factor: float = 0.1,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
    ) -> None:
        boundaries = tuple(int(b) for b in boundaries)
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"boundaries must be increasing, got {boundaries}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.learning_rate = float(learning_rate)
        self.boundaries = boundaries
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        decays = tf.zeros([], tf.float32)
        for boundary in self.boundaries:
            decays += tf.cast(step >= boundary, tf.float32)
        rate = self.learning_rate * tf.pow(self.decay_factor, decays)
        if self.warmup_steps > 0:
            progress = tf.minimum(step / self.warmup_steps, 1.0)
            rate *= self.warmup_factor + (1.0 - self.warmup_factor) * progress
        return rate

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "boundaries": list(self.boundaries),
            "decay_factor": self.decay_factor,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }
