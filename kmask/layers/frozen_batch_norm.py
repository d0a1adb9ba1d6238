"""Batch normalization with fixed statistics and affine parameters (the papers' "frozen BN")."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kmask")
class FrozenBatchNorm(keras.layers.Layer):
    """Batch normalization whose statistics and affine parameters never change.

    ``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta`` over the last
    (channel) axis. All four vectors are non-trainable weights: no gradient reaches them and,
    unlike ``keras.layers.BatchNormalization``, ``training=True`` does not use batch
    statistics nor update the moving ones. This is how the Mask R-CNN and FPN papers (and
    their public reference implementations) treat the ImageNet-pretrained backbone's BN,
    because detection mini-batches of 2 images per device are too small for batch statistics.

    The weights are named and ordered like those of ``keras.layers.BatchNormalization``
    (``gamma, beta, moving_mean, moving_variance``), so ``set_weights(bn.get_weights())``
    and weight files of keras.applications models fit.

    Mixed precision: the weights are stored in the policy's variable dtype (float32); the
    per-channel ``scale = gamma / sqrt(moving_variance + epsilon)`` and
    ``shift = beta - moving_mean * scale`` are folded in float32 and only then cast to the
    compute dtype, so the activations see a single multiply-add in the compute dtype.

    Args:
      epsilon: added to the variance before the square root. keras.applications ResNets use
        1.001e-5.
      **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Input shape: ``[..., C]``. Output shape: the same, in the layer's compute dtype.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Creates the four ``[C]`` weights for ``input_shape = [..., C]``."""
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("FrozenBatchNorm needs a known channel (last) dimension")
        shape = (channels,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", trainable=False, name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="beta")
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="moving_variance"
        )

    def call(self, inputs: Any) -> Any:
        """Normalizes ``inputs [..., C]`` with the stored statistics; returns ``[..., C]``."""
        gamma = ops.cast(self.gamma, "float32")
        scale = gamma * ops.rsqrt(ops.cast(self.moving_variance, "float32") + self.epsilon)
        shift = ops.cast(self.beta, "float32") - ops.cast(self.moving_mean, "float32") * scale
        scale = ops.cast(scale, self.compute_dtype)
        shift = ops.cast(shift, self.compute_dtype)
        return inputs * scale + shift

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """The input shape ``[..., C]``."""
        return tuple(input_shape)
