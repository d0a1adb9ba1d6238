"""Cityscapes ``gtFine`` instance annotations -> COCO JSON / TFRecord shards
(``kmask convert-cityscapes``; Mask R-CNN paper, appendix A)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from kmask.data import coco_fields, image_io
from kmask.data.coco_dataset import COCODataset
from kmask.data.output_folder import MARKER, OutputFolder
from kmask.data.shard_writer import ShardWriter
from kmask.errors import DataError

# The 8 classes of the instance segmentation benchmark (cityscapesScripts labels.py:
# hasInstances and not ignoreInEval) as (COCO category id, name, supercategory,
# Cityscapes label id). caravan (29) and trailer (30) have instances too but are ignored
# in the evaluation, so they are left out like every other label.
CITYSCAPES_CATEGORIES = (
    (1, "person", "human", 24),
    (2, "rider", "human", 25),
    (3, "car", "vehicle", 26),
    (4, "truck", "vehicle", 27),
    (5, "bus", "vehicle", 28),
    (6, "train", "vehicle", 31),
    (7, "motorcycle", "vehicle", 32),
    (8, "bicycle", "vehicle", 33),
)
# Label ids of labels.py run from 0 (unlabeled) to 33 (bicycle); license plate (-1) is
# never drawn into the id images.
MAX_LABEL_ID = 33
# Pixel values >= this are instances: label id * 1000 + the instance's index (0, 1, ...)
# among the polygons of its label; smaller values are a label id (for an instance class:
# a group region such as "cargroup").
INSTANCE_OFFSET = 1000

_IMAGE_SUFFIX = "_leftImg8bit.png"
_IDS_SUFFIX = "_gtFine_instanceIds.png"
_POLYGONS_SUFFIX = "_gtFine_polygons.json"


class CityscapesConverter:
    """Converts the fine annotations of Cityscapes to COCO instance annotations.

    Reads ``ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and, for
    each image, ``ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png``
    (``gtCoarse`` is not read). What the COCO annotations are:

    - categories 1..8: person, rider, car, truck, bus, train, motorcycle, bicycle, each with
      its ``cityscapes_label_id`` (24, 25, 26, 27, 28, 31, 32, 33);
    - masks are the exact pixels of the instanceIds PNG (the ground truth the official
      evaluation reads), as compressed COCO RLE; ``area`` is their pixel count and
      ``bbox`` their tight box ``[x, y, w, h]`` in whole pixels (a one-pixel instance has
      a 1 x 1 box). Every instance id present in the PNG has at least one pixel, so no
      annotation is empty; tiny instances are kept (the official evaluation ignores
      ground truth under 100 pixels, see the README's Cityscapes section);
    - pixels of an instance class without an instance index (value = label id < 1000:
      a group region such as a crowd of persons, "persongroup") become one ``iscrowd: 1``
      RLE annotation of that class per image;
    - every other label (road, sky, caravan, trailer, ...) is left out;
    - images are numbered 1, 2, ... in sorted path order per split, annotations likewise;
      ``file_name`` is relative to ``ROOT/leftImg8bit/<split>``.

    ``..._gtFine_polygons.json``, when present, is only cross-checked: its ``imgHeight`` /
    ``imgWidth`` must be the PNG's size, each instance ``label*1000 + k`` must have a k-th
    (0-based, ``deleted`` ones skipped) polygon of that label (the order in which
    cityscapesScripts' ``json2instanceImg`` numbers them) and each group region a
    ``<label>group`` polygon. The masks never come from the polygons.

    Errors (``DataError``) name the file: no images for a split, an image path that is not
    UTF-8, a missing or unreadable instanceIds PNG, an 8-bit one (instance ids need 16 or
    32 bits), a PNG whose size differs from its image, a pixel value whose label id is not
    one of labels.py (0..33), a polygons JSON that is malformed (``imgHeight`` /
    ``imgWidth`` not positive integers, ``objects`` not a list of objects with a
    ``label``) or disagrees as above.

    Output (``write``) goes to a hidden temporary folder next to ``out_dir`` that is
    renamed to ``out_dir`` only when complete: an interrupted conversion leaves nothing.
    The folder is marked as kmask's (``OutputFolder``, kind ``cityscapes``); it may not
    hold or lie inside ``ROOT/gtFine`` or ``ROOT/leftImg8bit``.

    Example::

        converter = CityscapesConverter("data/cityscapes")
        converter.write("data/cityscapes/annotations", splits=("train", "val"))
        # annotations/instances_train.json, file_name relative to leftImg8bit/train

    Args:
      root: the Cityscapes folder holding ``leftImg8bit/`` and ``gtFine/``.
      progress: show a tqdm progress bar per split.
    """

    def __init__(self, root: str | os.PathLike[str], *, progress: bool = False) -> None:
        self.root = Path(root)
        self.progress = progress
        if not self.root.is_dir():
            raise DataError(f"Cityscapes root not found: {self.root}")

    @staticmethod
    def categories() -> list[dict[str, Any]]:
        """The COCO ``categories`` of the converted annotations."""
        return [
            {"id": cid, "name": name, "supercategory": supercategory, "cityscapes_label_id": lid}
            for cid, name, supercategory, lid in CITYSCAPES_CATEGORIES
        ]

    def images_dir(self, split: str) -> Path:
        """The folder the ``file_name`` entries of ``split`` are relative to."""
        return self.root / "leftImg8bit" / split

    def convert(self, split: str) -> dict[str, Any]:
        """The COCO dataset (``images``, ``annotations``, ``categories``) of one split.

        Raises:
          DataError: see the class docstring.
        """
        images_dir = self.images_dir(split)
        paths = sorted(images_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
        if not paths:
            raise DataError(f"no */*{_IMAGE_SUFFIX} images in {images_dir}")
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for image_id, path in enumerate(
            tqdm(paths, unit="img", desc=f"convert-cityscapes {split}", disable=not self.progress),
            start=1,
        ):
            relative = path.relative_to(images_dir)
            try:
                relative.as_posix().encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(
                    f"{_printable(path)}: the file name is not UTF-8 (a COCO file_name is "
                    "text); rename the folder or file"
                ) from None
            stem = self.root / "gtFine" / split / relative.parent / path.name[: -len(_IMAGE_SUFFIX)]
            ids = _read_ids(Path(f"{stem}{_IDS_SUFFIX}"), path)
            polygons = Path(f"{stem}{_POLYGONS_SUFFIX}")
            if polygons.is_file():
                _check_polygons(polygons, Path(f"{stem}{_IDS_SUFFIX}"), ids)
            height, width = ids.shape
            images.append(
                {"id": image_id, "file_name": relative.as_posix(), "height": height, "width": width}
            )
            for annotation in _annotations(ids):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
        return {
            "info": {"description": f"Cityscapes gtFine {split} (kmask convert-cityscapes)"},
            "images": images,
            "annotations": annotations,
            "categories": self.categories(),
        }

    def write(
        self,
        out_dir: str | os.PathLike[str],
        splits: Sequence[str] = ("train", "val"),
        *,
        shards: bool = False,
        num_shards: int | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Writes ``instances_<split>.json`` per split into ``out_dir`` and, with
        ``shards``, also the TFRecord shards of ``kmask convert-coco``
        (``instances_<split>-NNNNN-of-MMMMM.tfrecord``, ``categories.json``); the JSON
        files stay, as COCO evaluation reads them. Returns the written files.

        Args:
          out_dir: output folder; it must not exist unless ``overwrite``.
          splits: the splits to convert (``train``, ``val``, ``test``).
          shards: also write TFRecord shards.
          num_shards: shards per split (default: one per 1000 images).
          overwrite: replace an existing ``out_dir`` that kmask wrote (only once the new
            one is complete; see ``OutputFolder.problem``).

        Raises:
          FileExistsError: ``out_dir`` exists and ``overwrite`` is False, holds or lies in
            an input folder, or may not be replaced (checked first; the reason named).
          DataError: see the class docstring; nothing is written then.
        """
        out = Path(out_dir)
        folder = OutputFolder(
            out, "cityscapes", inputs=[self.root / "gtFine", self.root / "leftImg8bit"]
        )
        folder.check(overwrite)
        if not splits or len(set(splits)) != len(splits):
            raise DataError(f"expected distinct splits, got {list(splits)}")
        with folder.write(overwrite) as staging:
            for split in splits:
                json_path = staging / f"instances_{split}.json"
                json_path.write_text(json.dumps(self.convert(split)))
                if shards:
                    dataset = COCODataset(json_path, self.images_dir(split), strict=True)
                    writer = ShardWriter(staging, num_shards=num_shards, prefix=json_path.stem)
                    writer.write(dataset, progress=self.progress)
        return sorted(path for path in out.iterdir() if path.name != MARKER)


def _read_ids(path: Path, image: Path) -> np.ndarray:
    """The int64 ``[H, W]`` id map of an instanceIds PNG, checked against its image."""
    if not path.is_file():
        raise DataError(f"{image}: its instance annotation {path} does not exist")
    try:
        with Image.open(path) as png:
            png.load()
            mode = png.mode
            ids = np.asarray(png, dtype=np.int64)
    except image_io.DECODE_ERRORS as error:
        raise DataError(f"{path}: cannot read it: {error}") from None
    if mode in ("1", "L", "P"):
        raise DataError(
            f"{path}: an 8-bit PNG (mode {mode}), but instance ids (label id * "
            f"{INSTANCE_OFFSET} + index) need 16 or 32 bits (is it a labelIds image?)"
        )
    if mode not in ("I", "I;16", "I;16B", "I;16L"):
        raise DataError(f"{path}: expected a one-channel id image, got PNG mode {mode}")
    try:
        with Image.open(image) as picture:
            size = picture.size
    except image_io.DECODE_ERRORS as error:
        raise DataError(f"{image}: cannot read it: {error}") from None
    if size != (ids.shape[1], ids.shape[0]):
        raise DataError(
            f"{path}: size {ids.shape[1]}x{ids.shape[0]} differs from its image {image} "
            f"({size[0]}x{size[1]})"
        )
    labels = np.where(ids >= INSTANCE_OFFSET, ids // INSTANCE_OFFSET, ids)
    unknown = (labels < 0) | (labels > MAX_LABEL_ID)
    if unknown.any():
        value, label = ids[unknown][0], labels[unknown][0]
        raise DataError(
            f"{path}: pixel value {value} has label id {label}, which is not a Cityscapes "
            f"label id (0..{MAX_LABEL_ID})"
        )
    return ids


def _printable(path: Path) -> str:
    """``path`` for messages, its bytes that are not UTF-8 written as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _annotations(ids: np.ndarray) -> list[dict[str, Any]]:
    """COCO annotations (without ``id`` / ``image_id``) of the 8 classes in an id map, in
    increasing pixel value order."""
    category_of_label = {lid: cid for cid, _, _, lid in CITYSCAPES_CATEGORIES}
    annotations = []
    for value in np.unique(ids):
        crowd = value < INSTANCE_OFFSET
        category = category_of_label.get(int(value if crowd else value // INSTANCE_OFFSET))
        if category is None:
            continue
        mask = ids == value
        rows, columns = np.nonzero(mask)
        y0, y1, x0, x1 = rows.min(), rows.max(), columns.min(), columns.max()
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append(
            {
                "category_id": category,
                "iscrowd": int(crowd),
                "area": int(rows.size),
                "bbox": [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)],
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
            }
        )
    return annotations


def _check_polygons(path: Path, ids_path: Path, ids: np.ndarray) -> None:
    """Raises ``DataError`` when the polygons JSON disagrees with the id map (size, or an
    instance / group region without its polygon)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a Cityscapes polygons JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a Cityscapes polygons JSON (the top level is not an object)")
    for key in ("imgHeight", "imgWidth"):
        if coco_fields.as_int(data.get(key), 1, coco_fields.MAX_PIXELS) is None:
            raise DataError(f"{path}: {key!r} must be a positive integer, got {data.get(key)!r}")
    height, width = int(data["imgHeight"]), int(data["imgWidth"])
    objects = data.get("objects")
    if not isinstance(objects, list):
        raise DataError(f"{path}: 'objects' must be a list of objects, got {objects!r}")
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("label"), str):
            raise DataError(f"{path}: objects[{i}] {obj!r} is not an object with a 'label' string")
    labels = Counter(o["label"] for o in objects if not o.get("deleted", False))
    if (height, width) != ids.shape:
        raise DataError(
            f"{path}: imgHeight x imgWidth {height}x{width} differs from {ids_path} "
            f"({ids.shape[0]}x{ids.shape[1]})"
        )
    name_of_label = {lid: name for _, name, _, lid in CITYSCAPES_CATEGORIES}
    for value in np.unique(ids):
        if value < INSTANCE_OFFSET:
            name = name_of_label.get(int(value))
            if name is not None and not labels[f"{name}group"]:
                raise DataError(
                    f"{ids_path}: a {name} group region (value {value}) but {path} has no "
                    f"{name}group polygon"
                )
            continue
        name = name_of_label.get(int(value // INSTANCE_OFFSET))
        if name is not None and value % INSTANCE_OFFSET >= labels[name]:
            raise DataError(
                f"{ids_path}: instance {value} ({name} number {value % INSTANCE_OFFSET}, "
                f"counted from 0) but {path} has {labels[name]} {name} polygon(s)"
            )
