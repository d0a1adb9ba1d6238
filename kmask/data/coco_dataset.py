"""A COCO-format dataset (JSON + image folder) as a source of ``tf.data`` examples."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils

from kmask.data import image_io, pipeline
from kmask.data.bad_input_report import BadInputReport
from kmask.data.coco_parser import COCOParser
from kmask.data.example_source import ExampleSource
from kmask.data.image_record import ImageRecord
from kmask.errors import DataError


class COCODataset(ExampleSource):
    """Images and instance annotations of a COCO JSON, validated once at construction;
    ``build`` and ``training_stream`` batch its decoded examples (``ExampleSource``).

    Reads boxes, polygon / RLE (compressed or not) masks and keypoints. Category ids map to
    contiguous class ids 0..K-1 in the order of the original ids (``categories``).
    Every field is checked for type, range and finiteness here, once, before any
    pycocotools call (``coco_parser.COCOParser``, ``coco_fields``). Problems are handled
    per image or annotation, each logged with the file, the image id and the annotation id
    and counted in ``report`` (``DataError`` instead when ``strict``):

    - an image whose id is not an integer in [0, 10**18), whose height or width is not a
      positive integer, whose ``file_name`` is not a UTF-8 string or leaves ``images_dir``
      (unless ``allow_outside_images``) is skipped with its annotations;
    - a box partly outside the image is clipped; one with nothing left inside, or with
      zero/negative width or height, or not four finite numbers, is dropped;
    - polygons with fewer than 3 points are dropped (the instance too when none is left);
      an instance with a polygon that is not numbers or lies far outside the image, an RLE
      whose size is not the image's, whose run lengths are negative or do not sum to
      height*width, or whose compressed string is corrupt, is dropped;
    - an annotation with an invalid or unknown category id, an unknown image id, an
      ``iscrowd`` other than 0/1, an ``area`` that is not a finite number >= 0, or
      keypoints that are not finite numbers with visibility 0/1/2 is dropped;
    - an annotation without segmentation keeps its box as its mask;
    - unreadable, truncated, missing images, or images whose size differs from the JSON,
      are skipped when read (``load``, ``examples``, the TFRecord writer).

    A JSON without ``images``, ``annotations`` or ``categories``, or entries without their
    required keys, raise ``DataError`` naming the key; so do malformed keypoint metadata of
    a category (``CategoryMap``) and an annotation whose keypoints do not fit its category
    (labelled keypoints for a category without ``keypoints`` names, or a list that is not 3
    numbers per name), naming the annotation, the category and the field.

    Args:
      json_path: COCO annotation file.
      images_dir: folder the images' ``file_name`` are relative to.
      strict: raise on the first bad image or annotation instead of skipping it.
      allow_outside_images: read ``file_name`` values that are absolute or leave
        ``images_dir`` through ``..`` (by default such images are skipped).
    """

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        images_dir: str | os.PathLike[str],
        *,
        strict: bool = False,
        allow_outside_images: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.images_dir = Path(images_dir)
        self.allow_outside_images = allow_outside_images
        if not self.json_path.is_file():
            raise DataError(f"annotation file not found: {self.json_path}")
        if not self.images_dir.is_dir():
            raise DataError(f"images folder not found: {self.images_dir}")
        self.report = BadInputReport(str(self.json_path), strict=strict)
        parser = COCOParser(
            self.json_path,
            self.images_dir,
            self.report,
            allow_outside_images=allow_outside_images,
        )
        self.categories, self.records = parser.parse()

    @property
    def image_ids(self) -> tuple[int, ...]:
        """COCO ids of the images, in JSON order."""
        return tuple(record.image_id for record in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def read_image(self, record: ImageRecord) -> tuple[np.ndarray, bytes, str | None] | None:
        """Reads and decodes one image; None (after a warning) when it is unusable.

        Returns:
          ``(rgb, data, keep_format)``: uint8 ``[H, W, 3]``, the file's bytes, and
          ``"jpeg"``/``"png"`` when the bytes can be stored as they are (see
          ``image_io.decode_rgb``).
        """
        path = self.images_dir / record.file_name
        try:
            data = path.read_bytes()
        except OSError as error:
            reason = "missing image file" if not path.exists() else "unreadable image file"
            self.report.skip(reason, record.image_id, str(path), str(error.strerror or error))
            return None
        try:
            rgb, keep = image_io.decode_rgb(data)
        except image_io.DECODE_ERRORS as error:
            self.report.skip("corrupt or truncated image", record.image_id, str(path), str(error))
            return None
        if rgb.shape[:2] != (record.height, record.width):
            self.report.skip(
                "image size differs from the JSON",
                record.image_id,
                str(path),
                f"file {rgb.shape[1]}x{rgb.shape[0]}, JSON {record.width}x{record.height}",
            )
            return None
        return rgb, data, keep

    def decode_masks(self, record: ImageRecord, selection: np.ndarray | None = None) -> np.ndarray:
        """Full-image masks of the record's instances (all, or those where ``selection``).

        Returns:
          uint8 ``[n, height, width]`` in {0, 1}.
        """
        height, width = record.height, record.width
        indices = np.arange(len(record.segmentations))
        if selection is not None:
            indices = indices[selection]
        masks = np.zeros((len(indices), height, width), np.uint8)
        for out, i in enumerate(indices):
            segmentation = record.segmentations[i]
            if segmentation is None:
                y1, x1, y2, x2 = record.boxes[i]
                rle = mask_utils.frPyObjects(
                    np.array([[x1, y1, x2 - x1, y2 - y1]], np.float64), height, width
                )[0]
            elif isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            masks[out] = mask_utils.decode(rle)
        return masks

    def load(self, index: int) -> dict[str, np.ndarray] | None:
        """The decoded example (``kmask.data.transforms``) of ``records[index]``, NumPy.

        Crowd instances are left out; keypoints become continuous coordinates (COCO's
        integer pixel indices + 0.5) as ``(x, y, v)``, COCO's order. None when the image is
        unusable.
        """
        record = self.records[index]
        image = self.read_image(record)
        if image is None:
            return None
        keep = ~record.is_crowd
        example = {
            "image": image[0],
            "image_id": np.int64(record.image_id),
            "boxes": record.boxes[keep].astype(np.float32),
            "classes": record.classes[keep].astype(np.int32),
            "masks": self.decode_masks(record, keep),
        }
        if self.categories.num_keypoints:
            x, y, v = np.moveaxis(record.keypoints[keep], -1, 0)
            visible = v > 0
            example["keypoints"] = np.stack(
                [np.where(visible, x + 0.5, 0.0), np.where(visible, y + 0.5, 0.0), v], axis=-1
            ).astype(np.float32)
        return example

    # ------------------------------------------------------------------ tf.data

    def examples(
        self,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_empty: bool = False,
        num_parallel_calls: int = tf.data.AUTOTUNE,
    ) -> tf.data.Dataset:
        """Decoded examples (``kmask.data.transforms``) as a ``tf.data.Dataset``.

        Image ids are shuffled (all of them, reshuffled every epoch) before any image is
        read; images are read and their masks decoded by Pillow and pycocotools in
        ``num_parallel_calls`` parallel calls. Unusable images are skipped with a warning;
        a summary is logged when the first epoch has been read.

        Args:
          shuffle: shuffle the image order.
          seed: shuffle seed.
          drop_empty: leave out images without non-crowd instances.
          num_parallel_calls: parallel readers (-1 = autotune).
        """
        indices = self._record_indices(drop_empty)
        dataset = tf.data.Dataset.from_tensor_slices({"record": np.asarray(indices, np.int64)})
        if shuffle:
            dataset = dataset.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
        return self._read(dataset, len(indices), num_parallel_calls)

    def pass_examples(
        self,
        order_seed: tf.Tensor,
        first: tf.Tensor,
        *,
        drop_empty: bool = False,
        num_parallel_calls: int = tf.data.AUTOTUNE,
    ) -> tf.data.Dataset:
        """Decoded examples of one pass of ``pipeline.training_stream``, from item ``first``.

        Item ``k`` of the pass is the image at position
        ``tf.random.experimental.index_shuffle(k, order_seed, n - 1)`` of the ``n``
        images: a stateless permutation, so a pass starts at any item without reading the
        ones before. Each example has its item index under ``pipeline.INDEX_KEY``.

        Args:
          order_seed: int64 ``[2]``, the seed of the pass's order.
          first: int64 ``[]``, the first item.
          drop_empty: leave out images without non-crowd instances.
          num_parallel_calls: parallel readers (-1 = autotune).
        """
        indices = self._record_indices(drop_empty)
        records = tf.constant(indices, tf.int64)
        last = len(indices) - 1
        dataset = tf.data.Dataset.range(first, len(indices)).map(
            lambda k: {
                "record": tf.gather(
                    records, tf.random.experimental.index_shuffle(k, order_seed, last)
                ),
                pipeline.INDEX_KEY: k,
            }
        )
        return self._read(dataset, len(indices), num_parallel_calls)

    def _record_indices(self, drop_empty: bool) -> list[int]:
        """Positions in ``records`` of the images to read (``DataError`` when none)."""
        indices = [
            i for i, record in enumerate(self.records) if not drop_empty or record.num_instances
        ]
        if not indices:
            raise DataError(f"{self.json_path}: no images with annotations to read")
        return indices

    def _read(self, items: tf.data.Dataset, total: int, num_parallel_calls: int) -> tf.data.Dataset:
        """``{"record": index into records, ...}`` items -> decoded examples that keep the
        items' other keys; unusable images are skipped."""
        num_keypoints = self.categories.num_keypoints

        def read(index: np.ndarray) -> tuple[np.ndarray, ...]:
            record = self.records[int(index)]
            example = self.load(int(index))
            self.report.image_seen(record.image_id, total)
            if example is None:
                return (
                    np.zeros((1, 1, 3), np.uint8),
                    np.int64(record.image_id),
                    np.zeros((0, 4), np.float32),
                    np.zeros((0,), np.int32),
                    np.zeros((0, 1, 1), np.uint8),
                    np.zeros((0, num_keypoints, 3), np.float32),
                    np.bool_(False),
                )
            keypoints = example.get(
                "keypoints", np.zeros((len(example["boxes"]), 0, 3), np.float32)
            )
            return (
                example["image"],
                example["image_id"],
                example["boxes"],
                example["classes"],
                example["masks"],
                keypoints,
                np.bool_(True),
            )

        def read_tf(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            image, image_id, boxes, classes, masks, keypoints, valid = tf.numpy_function(
                read,
                [item["record"]],
                [tf.uint8, tf.int64, tf.float32, tf.int32, tf.uint8, tf.float32, tf.bool],
                stateful=False,
            )
            image.set_shape([None, None, 3])
            image_id.set_shape([])
            boxes.set_shape([None, 4])
            classes.set_shape([None])
            masks.set_shape([None, None, None])
            keypoints.set_shape([None, num_keypoints, 3])
            valid.set_shape([])
            example = {
                "image": image,
                "image_id": image_id,
                "boxes": boxes,
                "classes": classes,
                "masks": masks,
                "valid": valid,
            }
            if num_keypoints:
                example["keypoints"] = keypoints
            example.update({key: value for key, value in item.items() if key != "record"})
            return example

        dataset = items.map(read_tf, num_parallel_calls=num_parallel_calls)
        dataset = dataset.filter(lambda example: example["valid"])
        return dataset.map(lambda example: {k: v for k, v in example.items() if k != "valid"})
