"""Keras layer: a stack of 3x3 convolutions, each followed by an optional norm and ReLU."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.layers.normalization import build_norm, check_norm


def msra_fill() -> keras.initializers.Initializer:
    """He (MSRA) normal with fan_out: Caffe2's ``MSRAFill``, PyTorch's
    ``kaiming_normal_(mode="fan_out")``, the reference implementations' conv init."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


@keras.saving.register_keras_serializable(package="kmask")
class ConvStack(keras.layers.Layer):
    """``num_conv`` x (3x3 conv of ``filters`` -> norm -> ReLU), stride 1, "same" padding.

    The head trunk of the RPN, box and mask heads: convolutions carry a bias only without
    normalization (as torchvision's ``Conv2dNormActivation`` and detectron2's ``Conv2d``).
    Sublayers are named ``conv{i}`` and ``norm{i}`` (i from 1).

    Args:
      filters: output channels of every convolution.
      num_conv: number of convolutions (0 = identity).
      norm: one of ``kmask.layers.normalization.NORMS``.
      init_std: kernels drawn from normal(0, init_std) (the RPN head: 0.01); ``None`` =
        MSRA fill (box and mask heads). Biases start at zero.
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``x [N, H, W, C]`` -> ``[N, H, W, filters]`` (``x`` itself when ``num_conv = 0``)
    in the compute dtype.
    """

    def __init__(
        self,
        filters: int,
        num_conv: int,
        norm: str = "none",
        init_std: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_norm(norm, self.name)
        if num_conv < 0 or filters < 1:
            raise ValueError(f"{self.name}: need num_conv >= 0 and filters >= 1")
        self.filters = filters
        self.num_conv = num_conv
        init = msra_fill() if init_std is None else keras.initializers.RandomNormal(0.0, init_std)
        self.convs = [
            keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=norm == "none",
                kernel_initializer=init,
                name=f"conv{i + 1}",
                dtype=self.dtype_policy,
            )
            for i in range(num_conv)
        ]
        self.norms = [build_norm(norm, f"norm{i + 1}", self.dtype_policy) for i in range(num_conv)]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[-1]
        for conv, norm in zip(self.convs, self.norms):
            conv.build((None, None, None, channels))
            channels = self.filters
            if norm is not None:
                norm.build((None, None, None, channels))

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            if norm is not None:
                x = norm(x, training=training)
            x = tf.nn.relu(x)
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if not self.convs:
            return tuple(input_shape)
        return (*input_shape[:-1], self.filters)
