"""Region proposal network head, shared by all pyramid levels (FPN paper section 4.1)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def _level_keys(shapes: dict[str, Any]) -> list[str]:
    return sorted(shapes, key=lambda name: int(name[1:]))


@keras.saving.register_keras_serializable(package="kmask")
class RPN(keras.layers.Layer):
    """RPN head: 3x3 conv + ReLU, then sibling 1x1 convs for objectness and box deltas.

    The same weights slide over every level. Initialization follows the reference
    implementations: normal(std 0.01) kernels, zero biases.

    Args:
      num_anchors: anchors per location ``A`` (3 aspect ratios).
      conv_channels: channels of the shared 3x3 conv (the FPN's d = 256).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``features {"P2": [B, H2, W2, C], ..., "P6": [...]}`` ->
    ``(objectness {"Pk": [B, Hk*Wk*A]}, deltas {"Pk": [B, Hk*Wk*A, 4]})``, float32 logits and
    ``(dy, dx, dh, dw)`` deltas ordered (row, column, anchor) like ``kmask.ops.anchors``.
    """

    def __init__(self, num_anchors: int = 3, conv_channels: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.conv_channels = conv_channels
        init = keras.initializers.RandomNormal(stddev=0.01)
        common = {
            "kernel_initializer": init,
            "bias_initializer": "zeros",
            "dtype": self.dtype_policy,
        }
        self.conv = keras.layers.Conv2D(
            conv_channels, 3, padding="same", activation="relu", name="rpn_conv", **common
        )
        self.objectness = keras.layers.Conv2D(num_anchors, 1, name="rpn_objectness", **common)
        self.deltas = keras.layers.Conv2D(4 * num_anchors, 1, name="rpn_deltas", **common)

    def build(self, features_shape: dict[str, tuple[int | None, ...]]) -> None:
        channels = features_shape[_level_keys(features_shape)[0]][-1]
        self.conv.build((None, None, None, channels))
        self.objectness.build((None, None, None, self.conv_channels))
        self.deltas.build((None, None, None, self.conv_channels))

    def call(self, features: dict[str, Any]) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        objectness, deltas = {}, {}
        for key in _level_keys(features):
            hidden = self.conv(features[key])
            batch = tf.shape(hidden)[0]
            logits = tf.cast(self.objectness(hidden), tf.float32)
            objectness[key] = tf.reshape(logits, [batch, -1])
            box = tf.cast(self.deltas(hidden), tf.float32)
            deltas[key] = tf.reshape(box, [batch, -1, 4])
        return objectness, deltas

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]]
    ) -> tuple[dict[str, tuple[int | None, ...]], dict[str, tuple[int | None, ...]]]:
        objectness, deltas = {}, {}
        for key in _level_keys(features_shape):
            batch, height, width = features_shape[key][:3]
            count = None if height is None or width is None else height * width * self.num_anchors
            objectness[key] = (batch, count)
            deltas[key] = (batch, count, 4)
        return objectness, deltas

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_anchors": self.num_anchors, "conv_channels": self.conv_channels})
        return config
