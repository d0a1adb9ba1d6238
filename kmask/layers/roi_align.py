"""Keras layer over ``kmask.ops.roi_align`` (one feature map)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.ops.roi_align import output_size_pair, resolve_implementation, roi_align


@keras.saving.register_keras_serializable(package="kmask")
class ROIAlign(keras.layers.Layer):
    """RoIAlign of boxes on one NHWC feature map (torchvision / ONNX semantics, avg mode).

    Call: ``layer(features, boxes, box_indices)`` with features [B, H, W, C], boxes [K, 4]
    float32 (y1, x1, y2, x2) in input pixels and box_indices [K] int32; returns
    [K, out_h, out_w, C] in the features' dtype. Boxes stay float32 under mixed precision
    (the layer does not autocast).

    Args:
      output_size: int or (out_h, out_w).
      spatial_scale: feature pixels per input pixel (1 / stride).
      sampling_ratio: samples per bin and axis, 0 = adaptive.
      aligned: half-pixel shift (Detectron2 / torchvision ``aligned=True``).
      implementation: "auto", "custom" or "tf" (see ``kmask.ops.roi_align``).
    """

    def __init__(
        self,
        output_size: int | Sequence[int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        aligned: bool = True,
        implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.output_size = output_size_pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.implementation = implementation
        # Validates `implementation`. XLA cannot compile the custom op: Keras must not jit a
        # model that runs it.
        self.supports_jit = resolve_implementation(implementation) == "tf"

    def call(self, features: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor) -> tf.Tensor:
        return roi_align(
            features,
            boxes,
            box_indices,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.implementation,
        )

    def compute_output_shape(
        self, features_shape: tuple, boxes_shape: tuple, box_indices_shape: tuple
    ) -> tuple:
        return (boxes_shape[0], *self.output_size, features_shape[-1])
