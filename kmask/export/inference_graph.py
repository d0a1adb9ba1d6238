"""Preprocessing, model and postprocessing as one TensorFlow graph, for the exporters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import transforms
from kmask.data.category_map import CategoryMap
from kmask.data.image_decoding import decode_image
from kmask.modeling.roi_heads.instance_head import OutputKind, head_outputs, point_origins
from kmask.modeling.single_image_runner import SingleImageRunner
from kmask.ops.masks import paste_masks

INPUT_TYPES = ("image_bytes", "image_tensor", "tf_example")
IMAGE_FEATURE_KEY = "image/encoded"
IMPLEMENTATION_KEYS = ("roi_align_implementation", "implementation")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encoded_image_size(data: tf.Tensor) -> tf.Tensor:
    """int64 ``[2]`` ``(height, width)`` of one encoded JPEG, PNG or BMP image (a scalar
    string), read from its header without decoding it; an op error (InvalidArgument) for
    anything else.

    JPEG: ``tf.io.extract_jpeg_shape``; PNG: the big-endian width and height of the IHDR
    chunk that follows the signature; BMP: the little-endian int32 width and height at
    bytes 18 and 22 (the height is negative for top-down rows), where TensorFlow's BMP
    decoder reads them. GIF and WebP are refused: TensorFlow decodes every frame of an
    animation, and no header bounds the number of frames.
    """

    def png() -> tf.Tensor:
        digits = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
        size = tf.reduce_sum(tf.reshape(digits, [2, 4]) * [1 << 24, 1 << 16, 1 << 8, 1], 1)
        return tf.reverse(size, [0])  # (width, height) -> (height, width)

    def bmp() -> tf.Tensor:
        size = tf.io.decode_raw(tf.strings.substr(data, 18, 8), tf.int32, little_endian=True)
        return tf.abs(tf.reverse(tf.cast(size, tf.int64), [0]))

    def unknown() -> tf.Tensor:
        return after_check(tf.zeros([2], tf.int64), False, "not a JPEG, PNG or BMP image")

    is_png = tf.logical_and(
        tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE),
        tf.equal(tf.strings.substr(data, 12, 4), b"IHDR"),
    )
    return tf.case(
        [
            (tf.io.is_jpeg(data), lambda: tf.io.extract_jpeg_shape(data, tf.int64)[:2]),
            (is_png, png),
            (tf.equal(tf.strings.substr(data, 0, 2), b"BM"), bmp),
        ],
        default=unknown,
    )


def map_isolated(
    fn: Callable[[tf.Tensor], tuple[tf.Tensor, ...]],
    elements: tf.Tensor,
    fallback: tuple[tf.Tensor, ...],
    keep: tf.Tensor | None = None,
) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
    """``fn`` on each element of ``elements`` ``[B, ...]`` where an op error fails only that
    element (a corrupt image), not the batch.

    The elements go through a ``tf.data`` pipeline whose ``ignore_errors`` drops those whose
    ``fn`` raised: stock TensorFlow ops, where catching an op error any other way would need
    a Python op. Each output of ``fn`` is stacked to ``[B, ...]`` (zero-padded to the largest
    when the shapes differ), with ``fallback`` (one tensor per output, same dtypes) in place
    of the dropped elements and of those that ``keep`` (bool ``[B]``) leaves out unrun.

    Returns:
      (outputs, ok): ``ok`` bool ``[B]`` is True where ``fn`` ran and succeeded.
    """
    batch = tf.shape(elements, out_type=tf.int64)[0]
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(batch), elements))
    if keep is not None:
        dataset = dataset.filter(lambda index, _: tf.gather(keep, index))
    dataset = dataset.map(
        lambda index, element: (index, *fn(element)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    ).ignore_errors()
    # Always one element more, the fallback, with index B: the batch below is never empty.
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors((batch, *fallback)))
    index, *values = dataset.padded_batch(batch + 1).get_single_element()
    last = tf.shape(index, out_type=tf.int64)[0] - 1  # where the fallback is
    # position[i]: where element i is among the results; the fallback's when it is not.
    position = tf.scatter_nd(index[:, None], tf.range(last + 1) - last, [batch + 1])[:batch]
    position += last
    return tuple(tf.gather(value, position) for value in values), position < last


def after_check(tensor: tf.Tensor, holds: tf.Tensor, message: tf.Tensor) -> tf.Tensor:
    """``tensor``, available only once ``holds`` (scalar bool) is checked: InvalidArgument
    ``assertion failed: [MESSAGE]`` when it is False, so that no op using the result runs."""
    check = tf.debugging.Assert(holds, [message])
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


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
    resized on its own and, for encoded inputs, the model runs on each image at its own
    padded size (``SingleImageRunner``), so an image's outputs do not depend on its batch
    mates; an ``image_tensor`` batch has one size for all.

    Encoded images (``image_bytes``, ``tf_example``) are JPEG, PNG or BMP. Each is parsed,
    its size read from its header (``encoded_image_size``) and then decoded on its own
    (``map_isolated``): one that fails (not such an image, corrupt, an unparsable
    ``tf.train.Example``) gets ``decode_ok`` False and zero detections, and the rest of the
    batch is answered. Limits (``None``: none) refuse a whole request with InvalidArgument
    naming the limit and the value, before any image is decoded or resized:
    ``max_batch_size`` images per request, ``max_image_pixels`` (height x width) per image,
    from the header for encoded images.

    Args:
      model: a built ``MaskRCNN`` (Mask R-CNN, Faster R-CNN or RPN only).
      data_config: how images are resized and padded (the run's ``data`` section).
      categories: the training categories; ``detection_classes`` are their ids. ``None``
        gives ids ``1..num_classes``.
      mask_threshold: ``detection_full_masks`` are pasted probabilities ``>=`` this.
      mask_paste: how they are pasted (``kmask.ops.masks.paste_masks``; ``config.eval``).
      max_batch_size: most images per request (positive), or ``None``.
      max_image_pixels: most pixels per image (positive), or ``None``.

    Outputs (``outputs``), all boxes float32 ``(y1, x1, y2, x2)`` in source-image pixels,
    clipped to the image; entries past the count are zero (classes ``-1``):

    - detection models: ``detection_boxes [B, N, 4]``, ``detection_scores [B, N]``,
      ``detection_classes [B, N]`` int32 category ids, ``num_detections [B]`` int32; and
      every instance head's outputs (``InstanceHead.outputs``), mapped to source pixels as
      their ``OutputKind`` says: Mask R-CNN's ``detection_masks [B, N, M, M]`` float32
      probabilities in the box frame and, with ``full_masks``, ``detection_full_masks [B,
      N, H, W]`` uint8 {0, 1} pasted into a canvas of the largest source image of the batch
      (``H x W``); a keypoint head's ``detection_keypoints [B, N, K, 3]`` float32 (x, y,
      score), x and y in source-image pixels;
    - RPN only: ``proposals [B, P, 4]``, ``proposal_scores [B, P]``, ``num_proposals [B]``;
    - always ``original_size [B, 2]`` int32 ``(height, width)`` of each source image
      (``(0, 0)`` where it did not decode);
    - encoded inputs: ``decode_ok [B]`` bool, False for an image that did not decode (its
      entries are zero, its counts 0).
    """

    def __init__(
        self,
        model: keras.Model,
        data_config: DataConfig,
        categories: CategoryMap | None = None,
        mask_threshold: float = 0.5,
        mask_paste: str = "exact",
        max_batch_size: int | None = None,
        max_image_pixels: int | None = None,
    ) -> None:
        for name, value in (
            ("max_batch_size", max_batch_size),
            ("max_image_pixels", max_image_pixels),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        num_classes = None if model.roi_heads is None else model.roi_heads.box_head.num_classes
        if categories is None and num_classes is not None:
            categories = CategoryMap.placeholder(num_classes)
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
        self.max_batch_size = max_batch_size
        self.max_image_pixels = max_image_pixels
        self._single_image_runner = SingleImageRunner(model, data_config)

    def input_signature(self, input_type: str) -> tf.TensorSpec:
        """The serving input of ``input_type``: string ``[B]`` for ``image_bytes`` (JPEG, PNG
        or BMP) and ``tf_example`` (serialized ``tf.train.Example`` with
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
        if self.max_batch_size is not None:
            batch = tf.shape(inputs)[0]
            inputs = after_check(
                inputs,
                batch <= self.max_batch_size,
                tf.strings.format(
                    f"{input_type}: {{}} images in one request, over the limit "
                    f"max_batch_size={self.max_batch_size} set at export",
                    [batch],
                ),
            )
        decode_ok = None
        if input_type == "image_tensor":
            images, image_size, original_size = self._resize_tensor(inputs)
        else:
            images, image_size, original_size, decode_ok = self._decode_and_resize(
                inputs, input_type
            )
        if input_type == "image_tensor" or self.data_config.image_size is not None:
            # One size (the tensor's, or the fixed canvas): every image is padded alone
            # as it is in the batch.
            outputs = self.model({"images": images, "image_size": image_size}, training=False)
        else:
            outputs = self._single_image_runner(images, image_size)
        return self._postprocess(outputs, image_size, original_size, full_masks, decode_ok)

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

    def _check_pixels(
        self, tensor: tf.Tensor, size: tf.Tensor, known: tf.Tensor, name: str
    ) -> tf.Tensor:
        """``tensor`` once every image whose ``known`` (bool ``[B]``) size ``[B, 2]`` is
        known has at most ``max_image_pixels``; the message names the first image over."""
        if self.max_image_pixels is None:
            return tensor
        size = tf.cast(size, tf.int64)
        pixels = size[:, 0] * size[:, 1]
        over = tf.logical_and(known, pixels > self.max_image_pixels)
        # The first image over the limit (an extra last entry when none is, as for B = 0).
        first = tf.argmax(tf.cast(tf.concat([over, [True]], 0), tf.int32))
        height, width = tf.unstack(tf.gather(tf.concat([size, [[0, 0]]], 0), first))
        message = tf.strings.format(
            f"{name}[{{}}] is {{}}x{{}} = {{}} pixels, over the limit "
            f"max_image_pixels={self.max_image_pixels} set at export",
            [first, height, width, height * width],
        )
        return after_check(tensor, tf.logical_not(tf.reduce_any(over)), message)

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
        images = self._check_pixels(images, source[None], [True], "image_tensor")
        size = self._resized_size(source)
        # float input: the same numbers as resizing uint8, and an ONNX Resize in float32.
        resized = tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear")
        image_size = tf.tile(size[None], [batch, 1])
        original_size = tf.tile(source[None], [batch, 1])
        return self._pad_batch(resized, image_size), image_size, original_size

    def _decode_and_resize(
        self, inputs: tf.Tensor, input_type: str
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """string ``[B]`` (encoded images or serialized ``tf.train.Example``) -> as
        ``_resize_tensor``, and ``decode_ok [B]``. Two passes of ``map_isolated``: parse
        and read each header; check the pixel limit on all; then decode and resize each
        image on its own."""

        def header(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            if input_type == "tf_example":
                feature = {IMAGE_FEATURE_KEY: tf.io.FixedLenFeature([], tf.string)}
                data = tf.io.parse_single_example(data, feature)[IMAGE_FEATURE_KEY]
            return data, encoded_image_size(data)

        (encoded, header_size), readable = map_isolated(
            header, inputs, (tf.constant(""), tf.zeros([2], tf.int64))
        )
        encoded = self._check_pixels(encoded, header_size, readable, input_type)

        def decode(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            image = decode_image(data)
            source = tf.shape(image)[:2]
            size = self._resized_size(source)
            # uint8 in, float32 out: the numbers of resizing its float32 cast, without
            # that copy of the full-size image.
            return tf.image.resize(image, size, method="bilinear"), size, source

        (images, image_size, original_size), decode_ok = map_isolated(
            decode,
            encoded,
            (tf.zeros([0, 0, 3]), tf.ones([2], tf.int32), tf.zeros([2], tf.int32)),
            keep=readable,
        )
        return self._pad_batch(images, image_size), image_size, original_size, decode_ok

    # ----------------------------------------------------------------- postprocessing

    def _postprocess(
        self,
        outputs: dict[str, tf.Tensor],
        image_size: tf.Tensor,
        original_size: tf.Tensor,
        full_masks: bool,
        decode_ok: tf.Tensor | None,
    ) -> dict[str, tf.Tensor]:
        resized = tf.cast(image_size, tf.float32)
        source = tf.cast(original_size, tf.float32)
        scale = tf.tile(source / resized, [1, 2])[:, None, :]  # [B, 1, 4]
        limit = tf.tile(source, [1, 2])[:, None, :]

        def to_source(boxes: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
            boxes = tf.clip_by_value(boxes * scale, 0.0, limit)
            return tf.where(valid[..., None], boxes, 0.0)

        def counted(count: tf.Tensor, values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            """(count [B] int32, 0 for an image that did not decode; valid [B, N])."""
            count = tf.cast(count, tf.int32)
            if decode_ok is not None:
                count = tf.where(decode_ok, count, 0)
            return count, tf.range(tf.shape(values)[1])[None, :] < count[:, None]

        result = {"original_size": tf.cast(original_size, tf.int32)}
        if decode_ok is not None:
            result["decode_ok"] = decode_ok
        if "detection_boxes" not in outputs:
            count, valid = counted(outputs["num_proposals"], outputs["proposals"])
            result["proposals"] = to_source(outputs["proposals"], valid)
            result["proposal_scores"] = tf.where(valid, outputs["proposal_scores"], 0.0)
            result["num_proposals"] = count
            return result

        count, valid = counted(outputs["num_detections"], outputs["detection_boxes"])
        boxes = to_source(outputs["detection_boxes"], valid)
        category_ids = tf.constant(self.categories.category_ids, tf.int32)
        classes = tf.gather(category_ids, tf.maximum(outputs["detection_classes"], 0))
        result.update(
            detection_boxes=boxes,
            detection_scores=tf.where(valid, outputs["detection_scores"], 0.0),
            detection_classes=tf.where(valid, classes, -1),
            num_detections=count,
        )
        scale_y, scale_x = (source[:, k : k + 1] / resized[:, k : k + 1] for k in (0, 1))
        origins = point_origins(self.model)
        for output in head_outputs().values():
            if output.key not in outputs:
                continue
            values = output.to_source(
                outputs[output.key], scale_y, scale_x, origins.get(output.key, 0.0)
            )
            keep = valid
            for _ in range(values.shape.rank - 2):
                keep = keep[..., None]
            values = tf.where(keep, values, 0.0)
            result[output.key] = values
            if full_masks and output.kind is OutputKind.BOX_FRAME:
                canvas = tf.reduce_max(tf.concat([original_size, [[1, 1]]], 0), axis=0)
                pasted = paste_masks(
                    values, boxes, canvas, threshold=self.mask_threshold, method=self.mask_paste
                )
                pasted = tf.logical_and(pasted, valid[..., None, None])
                result[output.pasted_key] = tf.cast(pasted, tf.uint8)
        return result
