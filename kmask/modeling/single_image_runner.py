"""Inference on a batch of images of different sizes, each exactly as if sent alone."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import transforms


class SingleImageRunner:
    """Runs a model on each image of a batch at that image's own padded size, in a graph
    loop, so an image's outputs do not depend on its batch mates.

    A batch of images of different sizes is zero-padded to the largest; the convolutions
    near the padded border, and the proposals and detections they lead to, change with
    the amount of padding. Alone, an image is padded only to its own
    ``transforms.padded_image_size`` (a multiple of ``data.size_divisibility``, as
    torchvision and detectron2 pad one image). This runner crops each image of the batch
    back to that size and runs the model on it alone (``tf.map_fn`` over the batch, one
    trace of the model for a batch of one), which is what the exported graphs of
    ``InferenceGraph`` do for encoded images of any sizes. Python callers group the images
    of a batch by padded size instead (``Predictor.predict_batch``), which keeps the
    batching of images that share one.

    Args:
      model: a built ``MaskRCNN`` (any Keras model taking ``{"images", "image_size"}``).
      data_config: the ``data`` section the images were padded with.

    Call: ``runner(images, image_size)`` inside a ``tf.function``: ``images`` float32
    ``[B, H, W, 3]`` (image ``i`` valid at the top left ``image_size[i]`` and zero-padded
    to at least its padded size), ``image_size`` int32 ``[B, 2]`` ``(height, width)`` ->
    the model's outputs (``MaskRCNN`` at ``training=False``) stacked to ``[B, ...]``.
    """

    def __init__(self, model: keras.Model, data_config: DataConfig) -> None:
        self.model = model
        self.data_config = data_config
        self._single: Any = None  # the model's concrete function for one image

    def __call__(self, images: tf.Tensor, image_size: tf.Tensor) -> dict[str, tf.Tensor]:
        if self._single is None:
            self._single = tf.function(self._run).get_concrete_function(
                tf.TensorSpec([1, None, None, 3], tf.float32),
                tf.TensorSpec([1, 2], tf.int32),
            )
        image_size = tf.cast(image_size, tf.int32)
        padded = tf.broadcast_to(
            transforms.padded_image_size(image_size, self.data_config), tf.shape(image_size)
        )
        signature = {
            key: tf.TensorSpec(value.shape[1:], value.dtype)
            for key, value in self._single.structured_outputs.items()
        }

        def one(index: tf.Tensor) -> dict[str, tf.Tensor]:
            image = images[index : index + 1, : padded[index, 0], : padded[index, 1]]
            outputs = self._single(image, image_size[index : index + 1])
            return {key: value[0] for key, value in outputs.items()}

        return tf.map_fn(one, tf.range(tf.shape(images)[0]), fn_output_signature=signature)

    def _run(self, images: tf.Tensor, image_size: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.model({"images": images, "image_size": image_size}, training=False)
