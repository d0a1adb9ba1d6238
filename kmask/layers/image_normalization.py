"""Keras layer normalizing input images once, before the backbone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

_ORDERS = ("RGB", "BGR")


@keras.saving.register_keras_serializable(package="kmask")
class ImageNormalization(keras.layers.Layer):
    """``(reorder(images) * pixel_scale - pixel_mean) / pixel_std``, zero on the padding.

    Images enter as RGB 0..255 padded at the bottom/right; ``image_size`` gives each
    image's valid area. Pixels outside it are set to exactly zero after normalization:
    the padding torchvision and detectron2 feed their networks. (That alone does not make
    an image's results independent of how much padding its batch mates forced: the
    convolutions' biases and normalization make the padded region nonzero from the first
    layer on. ``Predictor`` and the exported graphs run each image at its own padded size:
    ``kmask.modeling.single_image_runner``.)

    Args:
      channel_order: "RGB" or "BGR": the channel order the backbone expects.
      pixel_scale: multiplies the 0..255 values first (1/255 for 0..1 inputs).
      pixel_mean: per-channel mean in ``channel_order``, subtracted after scaling.
      pixel_std: per-channel standard deviation in ``channel_order``, divided by last.
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(images [B, H, W, 3] RGB 0..255 any float/int dtype, image_size [B, 2] int32
    (h, w) of the valid area)`` -> ``[B, H, W, 3]`` float32.
    """

    def __init__(
        self,
        channel_order: str = "BGR",
        pixel_scale: float = 1.0,
        pixel_mean: Sequence[float] = (103.939, 116.779, 123.68),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if channel_order not in _ORDERS:
            raise ValueError(f"channel_order must be one of {_ORDERS}, got {channel_order!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"pixel_mean and pixel_std need 3 values, got {pixel_mean!r} and {pixel_std!r}"
            )
        if min(pixel_std) <= 0 or pixel_scale <= 0:
            raise ValueError(f"pixel_std and pixel_scale must be positive, got {pixel_std!r}")
        self.channel_order = channel_order
        self.pixel_scale = float(pixel_scale)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)

    def call(self, images: tf.Tensor, image_size: tf.Tensor) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        if self.channel_order == "BGR":
            x = tf.reverse(x, axis=[-1])
        x = (x * self.pixel_scale - tf.constant(self.pixel_mean)) / tf.constant(self.pixel_std)
        image_size = tf.cast(image_size, tf.int32)
        shape = tf.shape(x)
        rows = tf.range(shape[1])[None, :] < image_size[:, :1]  # [B, H]
        cols = tf.range(shape[2])[None, :] < image_size[:, 1:]  # [B, W]
        valid = rows[:, :, None, None] & cols[:, None, :, None]
        return tf.where(valid, x, 0.0)

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...], *args: Any
    ) -> tuple[int | None, ...]:
        """The images' shape ``[B, H, W, 3]``."""
        return tuple(input_shape)
