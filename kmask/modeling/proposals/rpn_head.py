"""Region proposal network head, shared by all pyramid levels (FPN paper section 4.1)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.layers.conv_stack import ConvStack
from kmask.ops.levels import sorted_levels


@keras.saving.register_keras_serializable(package="kmask")
class RPNHead(keras.layers.Layer):
    """``num_conv`` 3x3 convs + ReLU, then sibling 1x1 convs for objectness and box deltas.

    The same weights slide over every level; the convs keep the input's channels (the FPN's
    d). Initialization as the reference implementations: normal(std 0.01) kernels, zero
    biases. The papers' head has one conv; torchvision's v2 model two.

    Args:
      num_anchors: anchors per location ``A`` (3 aspect ratios).
      num_conv: shared 3x3 convs (1).
      norm: their normalization (``kmask.layers.normalization.NORMS``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``features {"P2": [B, H2, W2, C], ..., "P6": [...]}`` ->
    ``(objectness {"Pk": [B, Hk*Wk*A]}, deltas {"Pk": [B, Hk*Wk*A, 4]})``, float32 logits and
    ``(dy, dx, dh, dw)`` deltas ordered (row, column, anchor) like ``kmask.ops.anchors``.
    """

    def __init__(
        self, num_anchors: int = 3, num_conv: int = 1, norm: str = "none", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.num_conv = num_conv
        self.norm = norm
        self.conv = None  # ConvStack, created in build once the channel count is known
        common = {
            "kernel_initializer": keras.initializers.RandomNormal(stddev=0.01),
            "dtype": self.dtype_policy,
        }
        self.objectness = keras.layers.Conv2D(num_anchors, 1, name="objectness", **common)
        self.deltas = keras.layers.Conv2D(4 * num_anchors, 1, name="deltas", **common)

    def build(self, features_shape: dict[str, tuple[int | None, ...]]) -> None:
        channels = features_shape[sorted_levels(features_shape)[0]][-1]
        self.conv = ConvStack(
            channels,
            self.num_conv,
            self.norm,
            init_std=0.01,
            name="conv",
            dtype=self.dtype_policy.name,
        )
        self.conv.build((None, None, None, channels))
        self.objectness.build((None, None, None, channels))
        self.deltas.build((None, None, None, channels))

    def call(
        self, features: dict[str, tf.Tensor], training: bool | None = None
    ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        objectness, deltas = {}, {}
        for key in sorted_levels(features):
            hidden = self.conv(features[key], training=training)
            batch = tf.shape(hidden)[0]
            objectness[key] = tf.reshape(tf.cast(self.objectness(hidden), tf.float32), [batch, -1])
            box = tf.cast(self.deltas(hidden), tf.float32)
            deltas[key] = tf.reshape(box, [batch, -1, 4])
        return objectness, deltas

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]]
    ) -> tuple[dict[str, tuple[int | None, ...]], dict[str, tuple[int | None, ...]]]:
        objectness, deltas = {}, {}
        for key in sorted_levels(features_shape):
            batch, height, width = features_shape[key][:3]
            count = None if height is None or width is None else height * width * self.num_anchors
            objectness[key] = (batch, count)
            deltas[key] = (batch, count, 4)
        return objectness, deltas
