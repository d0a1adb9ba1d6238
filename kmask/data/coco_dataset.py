"""A COCO-format dataset (JSON + image folder) as a source of ``tf.data`` examples."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils

from kmask.config import DataConfig
from kmask.data import coco_fields, image_io, pipeline
from kmask.data.bad_input_report import BadInputReport
from kmask.data.category_map import CategoryMap
from kmask.data.image_record import ImageRecord
from kmask.data.stream_position import STREAM_START, StreamPosition
from kmask.errors import DataError


class CocoDataset:
    """Images and instance annotations of a COCO JSON, validated once at construction.

    Reads boxes, polygon / RLE (compressed or not) masks and keypoints. Category ids map to
    contiguous class ids 0..K-1 in the order of the original ids (``categories``).
    Every field is checked for type, range and finiteness here, once, before any
    pycocotools call (``kmask.data.coco_fields``). Problems are handled per image or
    annotation, each logged with the file, the image id and the annotation id and counted
    in ``report`` (``DataError`` instead when ``strict``):

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
        data = _read_json(self.json_path)
        self.categories = CategoryMap(data["categories"], source=str(self.json_path))
        self.records: tuple[ImageRecord, ...] = self._parse(data)

    @property
    def category_ids(self) -> tuple[int, ...]:
        """Original category id of each class (``category_ids[k]`` for class ``k``)."""
        return self.categories.category_ids

    @property
    def category_names(self) -> tuple[str, ...]:
        """Name of each class."""
        return self.categories.category_names

    @property
    def num_classes(self) -> int:
        """Number of foreground classes."""
        return self.categories.num_classes

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        """Keypoint names; empty when the dataset has no keypoints."""
        return self.categories.keypoint_names

    @property
    def image_ids(self) -> tuple[int, ...]:
        """COCO ids of the images, in JSON order."""
        return tuple(record.image_id for record in self.records)

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ parsing

    def _parse(self, data: Mapping[str, Any]) -> tuple[ImageRecord, ...]:
        source = str(self.json_path)
        images: dict[int, Mapping[str, Any]] = {}
        skipped_images: set[int] = set()
        for i, image in enumerate(_entries(data, "images", source)):
            for key in ("id", "file_name", "height", "width"):
                if key not in image:
                    raise DataError(f"{source}: images[{i}] has no key {key!r}")
            image_id = coco_fields.as_int(image["id"])
            if image_id is None:
                self.report.skip(
                    "invalid image id",
                    None,
                    None,
                    f"images[{i}]: id {image['id']!r} (expected an integer in "
                    f"[0, {coco_fields.MAX_ID}])",
                )
                continue
            if image_id in images or image_id in skipped_images:
                raise DataError(f"{source}: duplicate image id {image_id}")
            problem = self._image_problem(image)
            if problem is not None:
                skipped_images.add(image_id)
                self.report.skip(problem[0], image_id, _printable(image["file_name"]), problem[1])
                continue
            images[image_id] = image

        num_keypoints = self.categories.num_keypoints
        instances: dict[int, list[tuple]] = {image_id: [] for image_id in images}
        for i, annotation in enumerate(_entries(data, "annotations", source)):
            for key in ("image_id", "category_id", "bbox"):
                if key not in annotation:
                    raise DataError(f"{source}: annotations[{i}] has no key {key!r}")
            image_id = coco_fields.as_int(annotation["image_id"])
            if image_id in skipped_images:
                self.report.fix("annotation of a skipped image left out")
                continue
            image = images.get(image_id)  # type: ignore[arg-type]
            if image is None:
                self.report.skip(
                    "annotation for an unknown image id",
                    annotation["image_id"],
                    None,
                    f"annotation id {annotation.get('id')}",
                )
                continue
            parsed = self._parse_annotation(annotation, image, num_keypoints)
            if parsed is not None:
                instances[int(image["id"])].append(parsed)

        records = []
        for image_id, image in images.items():
            entries = instances[image_id]
            records.append(
                ImageRecord(
                    image_id=image_id,
                    file_name=str(image["file_name"]),
                    height=int(image["height"]),
                    width=int(image["width"]),
                    boxes=np.array([e[0] for e in entries], np.float64).reshape(-1, 4),
                    category_ids=np.array([e[1] for e in entries], np.int64),
                    classes=np.array([e[2] for e in entries], np.int32),
                    is_crowd=np.array([e[3] for e in entries], bool),
                    areas=np.array([e[4] for e in entries], np.float64),
                    segmentations=tuple(e[5] for e in entries),
                    keypoints=np.array([e[6] for e in entries], np.float64).reshape(
                        len(entries), num_keypoints, 3
                    ),
                )
            )
        return tuple(records)

    def _image_problem(self, image: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(reason, detail)`` when an image entry with a valid id is unusable, else None."""
        height = coco_fields.as_int(image["height"], 1, coco_fields.MAX_PIXELS)
        width = coco_fields.as_int(image["width"], 1, coco_fields.MAX_PIXELS)
        if height is None or width is None or height * width > coco_fields.MAX_PIXELS:
            return (
                "invalid image size",
                f"height {image['height']!r}, width {image['width']!r} (expected positive "
                f"integers, height*width <= {coco_fields.MAX_PIXELS})",
            )
        file_name = image["file_name"]
        if not isinstance(file_name, str) or not file_name or "\0" in file_name:
            return "invalid file_name", f"file_name {file_name!r}"
        try:
            file_name.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a "\udcff" escape in the JSON)
            return "invalid file_name", f"file_name {file_name!r} is not UTF-8 text"
        if not self.allow_outside_images and _leaves_folder(file_name):
            return (
                "file_name outside the images folder",
                f"{file_name!r} is absolute or leaves {self.images_dir} through '..' "
                "(allow it with --allow-outside-images / data.allow_outside_images)",
            )
        return None

    def _parse_annotation(
        self, annotation: Mapping[str, Any], image: Mapping[str, Any], num_keypoints: int
    ) -> tuple | None:
        """Validates one annotation: ``(box, category_id, class, crowd, area, seg, kps)``."""
        image_id = int(image["id"])
        file_name = str(image["file_name"])
        height, width = int(image["height"]), int(image["width"])
        annotation_id = annotation.get("id")

        def skip(reason: str, detail: str = "") -> None:
            prefix = f"annotation id {annotation_id!r}"
            self.report.skip(
                reason, image_id, file_name, f"{prefix}: {detail}" if detail else prefix
            )

        if "id" in annotation and coco_fields.as_int(annotation_id) is None:
            skip("invalid annotation id", f"expected an integer in [0, {coco_fields.MAX_ID}]")
            return None
        category_id = coco_fields.as_int(annotation["category_id"])
        if category_id is None:
            skip("invalid category id", f"category_id {annotation['category_id']!r}")
            return None
        class_id = self.categories.contiguous_id(category_id)
        if class_id is None:
            skip("unknown category id", f"category_id {annotation['category_id']}")
            return None
        bbox = annotation["bbox"]
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        ):
            skip("invalid box", f"bbox {bbox!r}")
            return None
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            skip("invalid box", f"bbox {bbox!r}")
            return None
        if w <= 0 or h <= 0:
            skip("zero-area box", f"bbox {bbox!r}")
            return None
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if x2 <= x1 or y2 <= y1:
            skip("box outside the image", f"bbox {bbox!r}, image {width}x{height}")
            return None
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            self.report.fix("box clipped to the image")
        iscrowd = annotation.get("iscrowd", 0)
        if coco_fields.as_int(iscrowd, 0, 1) is None:
            skip("invalid iscrowd", f"iscrowd {iscrowd!r} (expected 0 or 1)")
            return None
        area = annotation.get("area", w * h)
        if not coco_fields.is_number(area) or area < 0:
            skip("invalid area", f"area {area!r} (expected a finite number >= 0)")
            return None

        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list) and segmentation:
            problems = [coco_fields.polygon_problem(p, height, width) for p in segmentation]
            serious = [p for p in problems if p not in (None, "fewer than 3 points")]
            if serious:
                skip("invalid polygon", serious[0])
                return None
            polygons = [p for p, problem in zip(segmentation, problems) if problem is None]
            if len(polygons) < len(segmentation):
                if not polygons:
                    skip("polygon with fewer than 3 points")
                    return None
                self.report.fix("polygon part with fewer than 3 points removed")
            segmentation = polygons
        elif isinstance(segmentation, Mapping):
            problem = coco_fields.rle_problem(segmentation, height, width)
            if problem is not None:
                skip("invalid RLE", problem)
                return None
            segmentation = {"size": [height, width], "counts": segmentation["counts"]}
        elif segmentation is None or segmentation == []:
            segmentation = None
        else:
            skip("invalid segmentation", f"a {type(segmentation).__name__}")
            return None

        keypoints = np.zeros((num_keypoints, 3), np.float64)
        raw_keypoints = annotation.get("keypoints")
        if raw_keypoints:
            problem = coco_fields.keypoints_problem(raw_keypoints, num_keypoints)
            if problem is not None:
                skip("invalid keypoints", problem)
                return None
            category = f"category {self.categories.category_names[class_id]!r} (id {category_id})"
            where = f"{self.json_path}: annotation id {annotation_id!r}"
            if not self.categories.categories[class_id].get("keypoints"):
                if any(v > 0 for v in raw_keypoints[2::3]):
                    raise DataError(
                        f"{where}: labelled 'keypoints', but its {category} has no "
                        "'keypoints' names"
                    )
            elif len(raw_keypoints) != 3 * num_keypoints:
                raise DataError(
                    f"{where}: 'keypoints' holds {len(raw_keypoints)} numbers, but its "
                    f"{category} names {num_keypoints} keypoints (3 numbers each)"
                )
            else:
                keypoints = np.asarray(raw_keypoints, np.float64).reshape(num_keypoints, 3)
        return (
            (y1, x1, y2, x2),
            category_id,
            class_id,
            bool(iscrowd),
            float(area),
            segmentation,
            keypoints,
        )

    # ------------------------------------------------------------------ reading

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
        integer pixel indices + 0.5) as ``(y, x, v)``. None when the image is unusable.
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
                [np.where(visible, y + 0.5, 0.0), np.where(visible, x + 0.5, 0.0), v], axis=-1
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

    def build(self, config: DataConfig, *, training: bool, batch_size: int) -> tf.data.Dataset:
        """The batched ``(features, targets)`` pipeline (see ``kmask.data``), one epoch."""
        examples = self.examples(
            shuffle=training,
            seed=config.seed,
            drop_empty=training and config.drop_images_without_annotations,
            num_parallel_calls=config.num_parallel_calls,
        )
        return pipeline.batch_examples(
            examples,
            config,
            training=training,
            batch_size=batch_size,
            flip_permutation=self.categories.flip_permutation(),
        )

    def training_stream(
        self,
        config: DataConfig,
        *,
        batch_size: int,
        start: StreamPosition = STREAM_START,
    ) -> tf.data.Dataset:
        """The endless training batches from ``start`` (``pipeline.training_stream``):
        passes ordered by ``config.seed`` (which must be set) and the pass number."""
        return pipeline.training_stream(
            functools.partial(
                self.pass_examples,
                drop_empty=config.drop_images_without_annotations,
                num_parallel_calls=config.num_parallel_calls,
            ),
            config,
            batch_size=batch_size,
            start=start,
            flip_permutation=self.categories.flip_permutation(),
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO annotation file (the top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: not a COCO annotation file: no key {key!r}")
    return data


def _leaves_folder(file_name: str) -> bool:
    """Whether a ``file_name`` is absolute or climbs out of its folder through ``..``
    (judged on the name alone: symbolic links inside the folder are the user's choice)."""
    if os.path.isabs(file_name) or Path(file_name).drive:
        return True
    return os.path.normpath(file_name).split(os.sep)[0] == os.pardir


def _printable(value: Any) -> str:
    """A file name for messages (``repr`` for anything that is not a string)."""
    return value if isinstance(value, str) else repr(value)


def _entries(data: Mapping[str, Any], key: str, source: str) -> list[Mapping[str, Any]]:
    entries = data[key]
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise DataError(f"{source}: {key!r} must be a list of objects")
    return entries
