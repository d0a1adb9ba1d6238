"""Keras layer over ``kmask.ops.multi_level_roi_align`` (FPN level assignment)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.ops.levels import level_of
from kmask.ops.roi_align import (
    multi_level_roi_align,
    output_size_pair,
    resolve_implementation,
)


@keras.saving.register_keras_serializable(package="kmask")
class MultiLevelROIAlign(keras.layers.Layer):
    """RoIAlign of each box on its FPN level (FPN paper eq. 1, k0 = 4, canonical 224).

    Call: ``layer(features, boxes)`` with features a dict {"P2": [B, H/4, W/4, C], ...}
    (extra levels outside [min_level, max_level], e.g. the RPN-only P6, are ignored; a
    backbone's ``"C4"`` serves a single-level ResNet-C4 model, min = max = 4) and
    boxes [B, N, 4] float32 (y1, x1, y2, x2) in input pixels; returns
    [B, N, out_h, out_w, C] in input order, in the features' dtype. Boxes stay float32.

    Args:
      output_size: int or (out_h, out_w): 7 for the box head, 14 for the mask head.
      sampling_ratio: samples per bin and axis, 0 = adaptive.
      aligned: half-pixel shift.
      implementation: "auto", "custom" or "tf".
      min_level, max_level: pyramid levels boxes are pooled from (P2..P5 in Mask R-CNN).

    Reuse: per-box features from any pyramid, for a head of your own. Example::

        >>> import keras, numpy as np
        >>> from kmask.layers import MultiLevelROIAlign
        >>> pyramid = {f"P{k}": keras.random.normal((1, 64 >> k, 64 >> k, 16)) for k in range(2, 6)}
        >>> boxes = np.array([[[0, 0, 32, 32], [8, 8, 60, 40]]], "float32")  # [B, N, 4]
        >>> align = MultiLevelROIAlign(7, sampling_ratio=2, implementation="tf")
        >>> tuple(align(pyramid, boxes).shape)  # [B, N, 7, 7, C]
        (1, 2, 7, 7, 16)
    """

    def __init__(
        self,
        output_size: int | Sequence[int],
        sampling_ratio: int = 0,
        aligned: bool = True,
        implementation: str = "auto",
        min_level: int = 2,
        max_level: int = 5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not 0 <= min_level <= max_level:
            raise ValueError(f"need 0 <= min_level <= max_level, got {min_level}, {max_level}")
        self.output_size = output_size_pair(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.implementation = implementation
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        # Validates `implementation`. XLA cannot compile the custom op: Keras must not jit a
        # model that runs it.
        self.supports_jit = resolve_implementation(implementation) == "tf"

    def _levels(self, features: Mapping[str, Any]) -> dict[str, Any]:
        by_level = {level_of(key): key for key in features}
        wanted = range(self.min_level, self.max_level + 1)
        missing = [level for level in wanted if level not in by_level]
        if missing:
            raise ValueError(
                f"MultiLevelROIAlign needs features {[f'P{level}' for level in wanted]} (or "
                f"'C<k>' keys); missing {[f'P{level}' for level in missing]}, got "
                f"{sorted(features)}"
            )
        return {by_level[level]: features[by_level[level]] for level in wanted}

    def call(self, features: Mapping[str, tf.Tensor], boxes: tf.Tensor) -> tf.Tensor:
        return multi_level_roi_align(
            self._levels(features),
            boxes,
            self.output_size,
            self.sampling_ratio,
            self.aligned,
            self.implementation,
        )

    def compute_output_shape(
        self, features_shape: Mapping[str, tuple], boxes_shape: tuple
    ) -> tuple:
        channels = next(iter(self._levels(features_shape).values()))[-1]
        return (boxes_shape[0], boxes_shape[1], *self.output_size, channels)
