"""SGD with momentum, L2 weight decay in the gradient, and cross-replica gradient clipping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="kmask")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` whose weight decay is the papers' L2 penalty.

    Keras' own ``weight_decay`` is decoupled (``w -= lr * wd * w`` beside the momentum
    update, as in AdamW). The papers' "weight decay 1e-4" (Caffe, Detectron, PyTorch
    ``torch.optim.SGD``) adds ``wd * w`` to the gradient, which then goes through the
    momentum, so with momentum 0.9 it shrinks weights about ten times harder. This class
    does the latter: ``g' = g + weight_decay * w`` for every variable that
    ``exclude_from_weight_decay`` does not exclude, then the plain momentum update
    ``m = momentum * m - lr * g'; w += m``.

    ``clip_norm`` clips the global norm of the gradient **summed over all replicas**, the
    gradient the update uses. (Keras' ``global_clipnorm`` clips each replica's partial
    gradient before the cross-replica sum.) With several replicas this costs one extra
    all-reduce per step; the clip factor is then applied to each replica's part, which
    equals clipping the sum.

    Args:
      learning_rate: float or ``LearningRateSchedule``.
      momentum: 0.9 in the papers.
      weight_decay: L2 coefficient (1e-4 in the papers); 0 = none.
      clip_norm: global-norm clipping threshold; None = no clipping.
      no_decay_names: variables whose name contains one of these strings get no weight
        decay: by default biases and normalization scales and offsets (Keras names them
        ``bias``, ``gamma`` and ``beta``).
      **kwargs: other ``keras.optimizers.SGD`` arguments (``name``, ``nesterov``, ...);
        ``global_clipnorm``/``clipnorm`` are rejected in favour of ``clip_norm``.
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        clip_norm: float | None = None,
        no_decay_names: Sequence[str] = ("bias", "gamma", "beta"),
        **kwargs: Any,
    ) -> None:
        for key in ("global_clipnorm", "clipnorm"):
            if kwargs.pop(key, None) is not None:
                raise ValueError(f"{type(self).__name__}: use clip_norm instead of {key}")
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if clip_norm is not None and clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
        self.l2_weight_decay = float(weight_decay)
        # The schedule itself (``learning_rate`` evaluates it at the current step).
        self.learning_rate_schedule = (
            learning_rate
            if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
            else None
        )
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.no_decay_names = tuple(no_decay_names)
        self.exclude_from_weight_decay(var_names=list(self.no_decay_names))

    def apply(self, grads: list[Any], trainable_variables: list[Any] | None = None) -> Any:
        """Clips (when ``clip_norm`` is set) and applies one update."""
        if self.clip_norm is not None:
            grads = self._clip(list(grads))
        return super().apply(grads, trainable_variables)

    def _clip(self, grads: list[Any]) -> list[Any]:
        present = [g for g in grads if g is not None]
        total = present
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            total = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
        norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in total])
        # NaN norms stay NaN (and reach the non-finite guard) instead of being clipped to 0.
        factor = tf.where(norm > self.clip_norm, self.clip_norm / norm, 1.0)
        return [None if g is None else g * tf.cast(factor, g.dtype) for g in grads]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Momentum update with the L2 term added to the gradient."""
        if self.l2_weight_decay and self._use_weight_decay(variable):
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2_weight_decay, variable.dtype), variable),
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "weight_decay": self.l2_weight_decay,
                "clip_norm": self.clip_norm,
                "no_decay_names": list(self.no_decay_names),
            }
        )
        return config
