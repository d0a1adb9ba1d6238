"""Base of the heads that run on RoIs: RoIAlign from the pyramid, then a conv trunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.layers.conv_stack import ConvStack
from kmask.layers.multi_level_roi_align import MultiLevelROIAlign
from kmask.ops.levels import sorted_levels


class PooledHead(keras.layers.Layer):
    """``pooler`` (``MultiLevelROIAlign``) then ``convs`` (``ConvStack``) on each RoI.

    The box, mask (and keypoint) heads subclass it and add their own layers after the
    trunk. Boxes stay float32 (no autocast); the sublayers run in the compute dtype.

    Without ``pooler_levels`` the head has no pooler: it runs on per-RoI maps pooled by
    someone else, ``ROIHeads``' shared head in the ResNet-C4 models (``Res5Head``), and its
    ``features`` argument is then that ``[B, R, S, S, C]`` tensor instead of a pyramid
    (``pooler_resolution`` is S; the sampling arguments are unused).

    Args:
      pooler_resolution: RoIAlign output side S.
      pooler_sampling_ratio: samples per bin and axis (0 = adaptive).
      pooler_aligned: half-pixel-corrected RoIAlign.
      num_conv, conv_dim, norm: the trunk's 3x3 convs (``ConvStack``).
      pooler_levels: (min, max) FPN levels RoIs are pooled from (2, 5); ``None`` = no
        pooler (features arrive pooled).
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
        pooler_levels: Sequence[int] | None,
        roi_align_implementation: str,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.supports_jit = False  # NMS and the RoIAlign custom op cannot be XLA-compiled
        self.roi_align_implementation = roi_align_implementation
        self.pooler_resolution = pooler_resolution
        self.pooler = None
        if pooler_levels is not None:
            self.pooler = MultiLevelROIAlign(
                pooler_resolution,
                pooler_sampling_ratio,
                pooler_aligned,
                roi_align_implementation,
                *pooler_levels,
                name="pooler",
            )
        self.convs = ConvStack(conv_dim, num_conv, norm, name="convs", dtype=self.dtype_policy.name)

    def build_trunk(
        self, features_shape: dict[str, tuple[int | None, ...]] | tuple[int | None, ...]
    ) -> int:
        """Builds ``convs`` for the input's channels (the pyramid's, or the pooled maps'
        without a pooler); returns the trunk's output channels."""
        if self.pooler is None:
            channels = features_shape[-1]
        else:
            channels = features_shape[sorted_levels(features_shape)[0]][-1]
        side = self.pooler_resolution
        self.convs.build((None, side, side, channels))
        return self.convs.compute_output_shape((None, 1, 1, channels))[-1]

    def trunk(
        self, features: dict[str, tf.Tensor] | tf.Tensor, boxes: tf.Tensor, training: bool | None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(x [B * R, S, S, C'], B, R)``: pooled features of ``boxes [B, R, 4]`` (y1, x1,
        y2, x2 pixels) through the convs, in the compute dtype. Without a pooler
        ``features`` are the pooled maps [B, R, S, S, C] of ``boxes``."""
        pooled = features if self.pooler is None else self.pooler(features, boxes)
        batch, num = tf.shape(pooled)[0], tf.shape(pooled)[1]
        x = tf.reshape(pooled, [batch * num, *pooled.shape[2:]])
        return self.convs(x, training=training), batch, num
