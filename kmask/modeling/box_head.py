"""Fast R-CNN box head of FPN: 2 fc layers, class scores and class-specific box deltas."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kmask")
class BoxHead(keras.layers.Layer):
    """``num_fc`` fully connected ReLU layers of ``fc_dim``, then sibling predictors.

    Initialization as in the reference implementations: fc layers Caffe2 "XavierFill"
    (uniform, fan_in), class scores normal(std 0.01), deltas normal(std 0.001), zero biases.

    Args:
      num_classes: foreground classes K (background is added: K + 1 scores).
      num_fc: hidden fc layers (2).
      fc_dim: their width (1024).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``pooled [B, R, S, S, C]`` RoIAligned features ->
    ``(class_logits [B, R, K + 1] float32, column 0 = background,
    box_deltas [B, R, K, 4] float32 (dy, dx, dh, dw) per foreground class)``.
    """

    def __init__(
        self, num_classes: int, num_fc: int = 2, fc_dim: int = 1024, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_fc = num_fc
        self.fc_dim = fc_dim
        dtype = self.dtype_policy
        self.fcs = [
            keras.layers.Dense(
                fc_dim,
                activation="relu",
                kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "uniform"),
                name=f"fc{i + 1}",
                dtype=dtype,
            )
            for i in range(num_fc)
        ]
        self.cls_score = keras.layers.Dense(
            num_classes + 1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="cls_score",
            dtype=dtype,
        )
        self.bbox_pred = keras.layers.Dense(
            4 * num_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="bbox_pred",
            dtype=dtype,
        )

    def build(self, pooled_shape: tuple[int | None, ...]) -> None:
        features = pooled_shape[2] * pooled_shape[3] * pooled_shape[4]
        for fc in self.fcs:
            fc.build((None, features))
            features = self.fc_dim
        self.cls_score.build((None, features))
        self.bbox_pred.build((None, features))

    def call(self, pooled: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        shape = tf.shape(pooled)
        batch, num = shape[0], shape[1]
        x = tf.reshape(pooled, [batch * num, pooled.shape[2] * pooled.shape[3] * pooled.shape[4]])
        for fc in self.fcs:
            x = fc(x)
        logits = tf.cast(self.cls_score(x), tf.float32)
        deltas = tf.cast(self.bbox_pred(x), tf.float32)
        return (
            tf.reshape(logits, [batch, num, self.num_classes + 1]),
            tf.reshape(deltas, [batch, num, self.num_classes, 4]),
        )

    def compute_output_shape(
        self, pooled_shape: tuple[int | None, ...]
    ) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        batch, num = pooled_shape[:2]
        return (batch, num, self.num_classes + 1), (batch, num, self.num_classes, 4)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "num_fc": self.num_fc, "fc_dim": self.fc_dim}
        )
        return config
