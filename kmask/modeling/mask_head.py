"""Mask R-CNN mask head for FPN: 4 conv3x3, deconv 2x2 stride 2, 1x1 conv to K masks."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kmask")
class MaskHead(keras.layers.Layer):
    """Fully convolutional mask branch (Mask R-CNN figure 3, right).

    ``num_convs`` 3x3 ReLU convs of ``conv_dim``, a 2x2 stride-2 ReLU deconvolution
    doubling the resolution (14 -> 28), and a 1x1 conv predicting one mask logit map per
    foreground class. Initialization: He normal (fan_out) for convs and deconv, normal(std
    0.001) for the predictor, zero biases (reference implementations).

    Args:
      num_classes: foreground classes K.
      num_convs: 3x3 convs (4).
      conv_dim: their channels (256).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``pooled [B, R, S, S, C]`` -> ``mask_logits [B, R, 2S, 2S, K]`` float32 (apply a
    sigmoid for probabilities; only the class's own channel is trained).
    """

    def __init__(
        self, num_classes: int, num_convs: int = 4, conv_dim: int = 256, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_convs = num_convs
        self.conv_dim = conv_dim
        dtype = self.dtype_policy
        he = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
        self.convs = [
            keras.layers.Conv2D(
                conv_dim,
                3,
                padding="same",
                activation="relu",
                kernel_initializer=he,
                name=f"mask_fcn{i + 1}",
                dtype=dtype,
            )
            for i in range(num_convs)
        ]
        self.deconv = keras.layers.Conv2DTranspose(
            conv_dim,
            2,
            strides=2,
            activation="relu",
            kernel_initializer=he,
            name="deconv",
            dtype=dtype,
        )
        self.predictor = keras.layers.Conv2D(
            num_classes,
            1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="predictor",
            dtype=dtype,
        )

    def build(self, pooled_shape: tuple[int | None, ...]) -> None:
        channels = pooled_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.conv_dim
        self.deconv.build((None, None, None, channels))
        self.predictor.build((None, None, None, self.conv_dim))

    def call(self, pooled: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(pooled)
        batch, num = shape[0], shape[1]
        size = pooled.shape[2]
        x = tf.reshape(pooled, [batch * num, size, pooled.shape[3], pooled.shape[4]])
        for conv in self.convs:
            x = conv(x)
        x = self.predictor(self.deconv(x))
        logits = tf.cast(x, tf.float32)
        return tf.reshape(logits, [batch, num, 2 * size, 2 * size, self.num_classes])

    def compute_output_shape(self, pooled_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, num, height, width = pooled_shape[:4]
        double = (None if height is None else 2 * height, None if width is None else 2 * width)
        return (batch, num, *double, self.num_classes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_convs": self.num_convs,
                "conv_dim": self.conv_dim,
            }
        )
        return config
