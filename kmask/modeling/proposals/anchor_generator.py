"""Keras layer producing the anchors of a feature pyramid from its feature-map shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.config.rpn_config import FPN_ANCHOR_SIZES
from kmask.ops import anchors as anchor_ops


@keras.saving.register_keras_serializable(package="kmask")
class AnchorGenerator(keras.layers.Layer):
    """Anchors for the levels of a pyramid: sizes per level, shared aspect ratios.

    Args:
      sizes: sqrt of the anchor area per level, finest level first: a number per level
        (32 .. 512 on P2 .. P6) or a sequence per level (``[[32, 64, 128, 256, 512]]`` on
        the single C4 map of the ResNet-C4 models; ``kmask.ops.anchors.level_sizes``).
      aspect_ratios: height / width ratios (0.5, 1, 2).
      offset: anchor centre inside its cell, in cells (0.5 = centre; detectron2 and
        torchvision: 0.0).
      rounded: round the cell anchors to whole pixels (torchvision).
      stride_from_image: strides of padded image size // level size per axis
        (torchvision), not ``2**k`` (``kmask.ops.anchors.pyramid_anchors``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``features {"Pk": [B, Hk, Wk, C]}`` (only the shapes are used) ->
    ``{"Pk": [Hk*Wk*A, 4]}`` float32 ``(y1, x1, y2, x2)`` anchors in image pixels, shared by
    all images of the batch, ordered (row, column, anchor).
    """

    def __init__(
        self,
        sizes: Sequence[float | Sequence[float]] = FPN_ANCHOR_SIZES,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.5,
        rounded: bool = False,
        stride_from_image: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.sizes = anchor_ops.level_sizes(sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)
        self.rounded = bool(rounded)
        self.stride_from_image = bool(stride_from_image)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def call(self, features: dict[str, Any]) -> dict[str, tf.Tensor]:
        shapes = {}
        for key, value in features.items():
            dynamic = tf.shape(value)
            static = value.shape
            shapes[key] = (
                dynamic[1] if static[1] is None else static[1],
                dynamic[2] if static[2] is None else static[2],
            )
        return anchor_ops.pyramid_anchors(
            shapes,
            self.sizes,
            self.aspect_ratios,
            self.offset,
            self.rounded,
            self.stride_from_image,
        )

    def compute_output_shape(
        self, input_shape: dict[str, tuple[int | None, ...]]
    ) -> dict[str, tuple[int | None, int]]:
        result = {}
        for key, shape in input_shape.items():
            height, width = shape[1], shape[2]
            count = (
                None
                if height is None or width is None
                else height * width * self.num_anchors_per_location
            )
            result[key] = (count, 4)
        return result
