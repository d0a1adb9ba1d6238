"""Preprocessing, model and postprocessing as one TensorFlow graph, for the exporters."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import transforms
from kmask.data.category_map import CategoryMap
from kmask.ops.masks import paste_masks

INPUT_TYPES = ("image_bytes", "image_tensor", "tf_example")
IMAGE_FEATURE_KEY = "image/encoded"
IMPLEMENTATION_KEYS = ("roi_align_implementation", "implementation")


def with_roi_align(model: keras.Model, implementation: str) -> keras.Model:
    """A copy of ``model`` (same weights) whose RoIAlign layers use ``implementation``.

    Every ``roi_align_implementation`` / ``implementation`` entry of the model's nested
    Keras config is replaced, the model is rebuilt with ``from_config`` and the weights are
    copied, so the original model is left untouched.

    Args:
      model: a built ``MaskRCNN`` (any mode).
      implementation: ``"tf"`` (stock TensorFlow ops only) or ``"custom"``.
    """

    def replace(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: implementation if key in IMPLEMENTATION_KEYS else replace(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [replace(item) for item in value]
        return value

    config = replace(keras.saving.serialize_keras_object(model))
    clone = keras.saving.deserialize_keras_object(config)
    clone.build({"images": (None, None, None, 3)})
    clone.set_weights(model.get_weights())
    return clone


class InferenceGraph:
    """Raw images in, detections in source-image pixels and category ids out.

    Everything between is TensorFlow ops traced into the caller's ``tf.function``: decoding
    (``image_bytes``, ``tf_example``), the evaluation resizing of ``kmask.data`` (shorter
    side ``max(min_size)``, longer at most ``max_size``, bilinear), zero padding to a multiple
    of ``size_divisibility`` (or to ``data.image_size``), the model, and the mapping of its
    outputs back to each source image. Images of different sizes may share a batch: each is
    resized on its own and the batch is padded to the largest, as ``kmask.data`` batches are.

    Args:
      model: a built ``MaskRCNN`` (Mask R-CNN, Faster R-CNN or RPN only).
      data_config: how images are resized and padded (the run's ``data`` section).
      categories: the training categories; ``detection_classes`` are their ids. ``None``
        gives ids ``1..num_classes``.
      mask_threshold: ``detection_full_masks`` are pasted probabilities ``>=`` this.
      mask_paste: how they are pasted (``kmask.ops.masks.paste_masks``; ``config.eval``).

    Outputs (``outputs``), all boxes float32 ``(y1, x1, y2, x2)`` in source-image pixels,
    clipped to the image; entries past the count are zero (classes ``-1``):

    - detection models: ``detection_boxes [B, N, 4]``, ``detection_scores [B, N]``,
      ``detection_classes [B, N]`` int32 category ids, ``num_detections [B]`` int32;
      Mask R-CNN adds ``detection_masks [B, N, M, M]`` float32 probabilities in the box
      frame and, with ``full_masks``, ``detection_full_masks [B, N, H, W]`` uint8 {0, 1}
      pasted into a canvas of the largest source image of the batch (``H x W``); with a
      keypoint head ``detection_keypoints [B, N, K, 3]`` float32 (x, y, score), x and y in
      source-image pixels;
    - RPN only: ``proposals [B, P, 4]``, ``proposal_scores [B, P]``, ``num_proposals [B]``;
    - always ``original_size [B, 2]`` int32 ``(height, width)`` of each source image.
    """

    def __init__(
        self,
        model: keras.Model,
        data_config: DataConfig,
        categories: CategoryMap | None = None,
        mask_threshold: float = 0.5,
        mask_paste: str = "exact",
    ) -> None:
        num_classes = None if model.roi_heads is None else model.roi_heads.box_head.num_classes
        if categories is None and num_classes is not None:
            categories = CategoryMap(
                [{"id": k + 1, "name": f"class_{k + 1}"} for k in range(num_classes)]
            )
        if categories is not None and num_classes not in (None, categories.num_classes):
            raise ValueError(
                f"categories: {categories.num_classes} categories for a model with "
                f"{num_classes} classes"
            )
        self.model = model
        self.data_config = data_config
        self.categories = categories
        self.mask_threshold = mask_threshold
        self.mask_paste = mask_paste

    def input_signature(self, input_type: str) -> tf.TensorSpec:
        """The serving input of ``input_type``: string ``[B]`` for ``image_bytes`` (JPEG, PNG,
        GIF or BMP) and ``tf_example`` (serialized ``tf.train.Example`` with
        ``image/encoded``), uint8 ``[B, H, W, 3]`` RGB for ``image_tensor``."""
        if input_type == "image_tensor":
            return tf.TensorSpec([None, None, None, 3], tf.uint8, name=input_type)
        if input_type in ("image_bytes", "tf_example"):
            return tf.TensorSpec([None], tf.string, name=input_type)
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")

    def __call__(
        self, inputs: tf.Tensor, input_type: str, full_masks: bool = False
    ) -> dict[str, tf.Tensor]:
        """The outputs (class docstring) for a batch of ``input_signature(input_type)``."""
        self.input_signature(input_type)  # validates the name
        if input_type == "tf_example":
            parsed = tf.io.parse_example(
                inputs, {IMAGE_FEATURE_KEY: tf.io.FixedLenFeature([], tf.string)}
            )
            inputs = parsed[IMAGE_FEATURE_KEY]
        if input_type == "image_tensor":
            images, image_size, original_size = self._resize_tensor(inputs)
        else:
            images, image_size, original_size = self._decode_and_resize(inputs)
        outputs = self.model({"images": images, "image_size": image_size}, training=False)
        return self._postprocess(outputs, image_size, original_size, full_masks)

    # ------------------------------------------------------------------ preprocessing

    def _resized_size(self, original_size: tf.Tensor) -> tf.Tensor:
        config = self.data_config
        return transforms.resized_size(
            original_size[0],
            original_size[1],
            max(config.min_size),
            config.max_size,
            config.image_size,
            config.resize_rounding,
        )

    def _canvas(self) -> tuple[int, int]:
        """``(height, width)``: a padded size every resized image fits in."""
        if self.data_config.image_size is not None:
            return tuple(self.data_config.image_size)
        divisor = self.data_config.size_divisibility
        side = -(-self.data_config.max_size // divisor) * divisor
        return side, side

    def _pad_batch(self, images: tf.Tensor, image_size: tf.Tensor) -> tf.Tensor:
        """Images ``[B, h, w, 3]`` (valid top-left ``image_size``) cropped or zero-padded to
        the padded size of the largest valid area, as ``kmask.data`` batches are."""
        largest = tf.reduce_max(tf.concat([image_size, [[1, 1]]], 0), axis=0)
        padded = transforms.padded_image_size(largest, self.data_config)
        images = images[:, : padded[0], : padded[1]]
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        return tf.pad(images, [[0, 0], [0, padded[0] - height], [0, padded[1] - width], [0, 0]])

    def _resize_tensor(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """uint8 ``[B, H, W, 3]`` -> (float32 padded images, image_size ``[B, 2]``,
        original_size ``[B, 2]``), one resize for the whole batch."""
        batch = tf.shape(images)[0]
        source = tf.shape(images)[1:3]
        size = self._resized_size(source)
        # float input: the same numbers as resizing uint8, and an ONNX Resize in float32.
        resized = tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear")
        image_size = tf.tile(size[None], [batch, 1])
        original_size = tf.tile(source[None], [batch, 1])
        return self._pad_batch(resized, image_size), image_size, original_size

    def _decode_and_resize(self, encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """string ``[B]`` encoded images -> as ``_resize_tensor``; each image is decoded and
        resized on its own, placed top-left on a common canvas."""
        canvas = self._canvas()

        def one(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            source = tf.shape(image)[:2]
            size = self._resized_size(source)
            resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
            resized = tf.pad(resized, [[0, canvas[0] - size[0]], [0, canvas[1] - size[1]], [0, 0]])
            return resized, size, source

        images, image_size, original_size = tf.map_fn(
            one,
            encoded,
            fn_output_signature=(
                tf.TensorSpec([*canvas, 3], tf.float32),
                tf.TensorSpec([2], tf.int32),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        return self._pad_batch(images, image_size), image_size, original_size

    # ----------------------------------------------------------------- postprocessing

    def _postprocess(
        self,
        outputs: dict[str, tf.Tensor],
        image_size: tf.Tensor,
        original_size: tf.Tensor,
        full_masks: bool,
    ) -> dict[str, tf.Tensor]:
        resized = tf.cast(image_size, tf.float32)
        source = tf.cast(original_size, tf.float32)
        scale = tf.tile(source / resized, [1, 2])[:, None, :]  # [B, 1, 4]
        limit = tf.tile(source, [1, 2])[:, None, :]

        def to_source(boxes: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
            boxes = tf.clip_by_value(boxes * scale, 0.0, limit)
            return tf.where(valid[..., None], boxes, 0.0)

        def valid_mask(count: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
            return tf.range(tf.shape(values)[1])[None, :] < count[:, None]

        result = {"original_size": tf.cast(original_size, tf.int32)}
        if "detection_boxes" not in outputs:
            valid = valid_mask(outputs["num_proposals"], outputs["proposals"])
            result["proposals"] = to_source(outputs["proposals"], valid)
            result["proposal_scores"] = tf.where(valid, outputs["proposal_scores"], 0.0)
            result["num_proposals"] = tf.cast(outputs["num_proposals"], tf.int32)
            return result

        valid = valid_mask(outputs["num_detections"], outputs["detection_boxes"])
        boxes = to_source(outputs["detection_boxes"], valid)
        category_ids = tf.constant(self.categories.category_ids, tf.int32)
        classes = tf.gather(category_ids, tf.maximum(outputs["detection_classes"], 0))
        result.update(
            detection_boxes=boxes,
            detection_scores=tf.where(valid, outputs["detection_scores"], 0.0),
            detection_classes=tf.where(valid, classes, -1),
            num_detections=tf.cast(outputs["num_detections"], tf.int32),
        )
        if "detection_masks" in outputs:
            masks = tf.where(valid[..., None, None], outputs["detection_masks"], 0.0)
            result["detection_masks"] = masks
            if full_masks:
                canvas = tf.reduce_max(tf.concat([original_size, [[1, 1]]], 0), axis=0)
                pasted = paste_masks(
                    masks, boxes, canvas, threshold=self.mask_threshold, method=self.mask_paste
                )
                pasted = tf.logical_and(pasted, valid[..., None, None])
                result["detection_full_masks"] = tf.cast(pasted, tf.uint8)
        if "detection_keypoints" in outputs:
            # (x, y, score) in resized pixels -> source pixels; the score is kept.
            xy_scale = tf.reverse(source / resized, axis=[1])[:, None, None, :]  # [B,1,1,2]
            keypoints = outputs["detection_keypoints"]
            keypoints = tf.concat([keypoints[..., :2] * xy_scale, keypoints[..., 2:]], -1)
            result["detection_keypoints"] = tf.where(valid[..., None, None], keypoints, 0.0)
        return result
