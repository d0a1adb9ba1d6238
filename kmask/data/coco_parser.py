"""Validation of a COCO annotation file into ``ImageRecord``s (``COCODataset``'s parsing)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kmask.data import coco_fields
from kmask.data.bad_input_report import BadInputReport
from kmask.data.category_map import CategoryMap
from kmask.data.image_record import ImageRecord
from kmask.errors import DataError


class COCOParser:
    """Reads a COCO JSON and validates every image and annotation of it, once.

    The rules (what is skipped, clipped or refused, and how it is reported) are those of
    ``kmask.data.coco_dataset.COCODataset``, which parses through this class; each problem
    goes to ``report`` (``BadInputReport``: logged and counted, ``DataError`` when strict).

    Args:
      json_path: COCO annotation file.
      images_dir: folder the images' ``file_name`` are relative to (named in messages;
        nothing is read from it here).
      report: where skipped and fixed entries are counted.
      allow_outside_images: accept ``file_name`` values that are absolute or leave
        ``images_dir`` through ``..``.
    """

    def __init__(
        self,
        json_path: Path,
        images_dir: Path,
        report: BadInputReport,
        *,
        allow_outside_images: bool = False,
    ) -> None:
        self.json_path = json_path
        self.images_dir = images_dir
        self.report = report
        self.allow_outside_images = allow_outside_images

    def parse(self) -> tuple[CategoryMap, tuple[ImageRecord, ...]]:
        """The file's categories and its usable images, in JSON order.

        Raises:
          DataError: a file that is not JSON or not a COCO annotation file, entries without
            their required keys, duplicate image ids, malformed keypoint metadata, or (when
            the report is strict) the first bad image or annotation.
        """
        data = _read_json(self.json_path)
        self.categories = CategoryMap(data["categories"], source=str(self.json_path))
        return self.categories, self._records(data)

    def _records(self, data: Mapping[str, Any]) -> tuple[ImageRecord, ...]:
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
