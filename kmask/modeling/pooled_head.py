"""Base of the heads that run on RoIs: RoIAlign from the pyramid, then a conv trunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.layers.conv_stack import ConvStack
from kmask.layers.multi_level_roi_align import MultiLevelROIAlign


class PooledHead(keras.layers.Layer):
    """``pooler`` (``MultiLevelROIAlign``) then ``convs`` (``ConvStack``) on each RoI.

    The box, mask (and keypoint) heads subclass it and add their own layers after the
    trunk. Boxes stay float32 (no autocast); the sublayers run in the compute dtype.

    Args:
      pooler_resolution: RoIAlign output side S.
      pooler_sampling_ratio: samples per bin and axis (0 = adaptive).
      pooler_aligned: half-pixel-corrected RoIAlign.
      num_conv, conv_dim, norm: the trunk's 3x3 convs (``ConvStack``).
      pooler_levels: (min, max) FPN levels RoIs are pooled from (2, 5).
      roi_align_implementation: "auto" | "custom" | "tf" (``kmask.ops.roi_align``).
      **kwargs: base ``keras.layers.Layer`` arguments.
    """

    def __init__(
        self,
        pooler_resolution: int,
        pooler_sampling_ratio: int,
        pooler_aligned: bool,
        num_conv: int,
        conv_dim: int,
        norm: str,
        pooler_levels: Sequence[int],
        roi_align_implementation: str,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.supports_jit = False  # NMS and the RoIAlign custom op cannot be XLA-compiled
        self.roi_align_implementation = roi_align_implementation
        self.pooler = MultiLevelROIAlign(
            pooler_resolution,
            pooler_sampling_ratio,
            pooler_aligned,
            roi_align_implementation,
            *pooler_levels,
            name="pooler",
        )
        self.convs = ConvStack(conv_dim, num_conv, norm, name="convs", dtype=self.dtype_policy.name)

    def build_trunk(self, features_shape: dict[str, tuple[int | None, ...]]) -> int:
        """Builds ``convs`` for the pyramid's channels; returns the trunk's output channels."""
        channels = features_shape[f"P{self.pooler.min_level}"][-1]
        self.convs.build((None, *self.pooler.output_size, channels))
        return self.convs.compute_output_shape((None, 1, 1, channels))[-1]

    def trunk(
        self, features: dict[str, tf.Tensor], boxes: tf.Tensor, training: bool | None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(x [B * R, S, S, C'], B, R)``: pooled features of ``boxes [B, R, 4]`` (y1, x1,
        y2, x2 pixels) through the convs, in the compute dtype."""
        pooled = self.pooler(features, boxes)  # [B, R, S, S, C]
        batch, num = tf.shape(pooled)[0], tf.shape(pooled)[1]
        x = tf.reshape(pooled, [batch * num, *pooled.shape[2:]])
        return self.convs(x, training=training), batch, num
