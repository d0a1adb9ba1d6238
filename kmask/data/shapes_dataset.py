"""A synthetic instance segmentation dataset of coloured shapes (``kmask make-shapes``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from kmask.data import image_io

_SPLIT_CODES = {"train": 0, "val": 1}
# Corners of the polygon shapes (the rhombus is a square with one diagonal shortened).
_CORNERS = {"triangle": 3, "square": 4, "rhombus": 4, "pentagon": 5, "hexagon": 6}


class ShapesDataset:
    """Circles, squares and triangles in random colours, sizes, rotations and positions.

    Each image has a textured background (a smooth random colour field, stripes and
    pixel noise) and 1..``max_shapes`` shapes drawn one over another, so they overlap and
    occlude; a shape may also run over the image border. Masks are exact: a pixel belongs
    to a shape when its centre lies inside it, and each instance's mask is the part of
    its shape that no later shape covers. A new shape is rejected (and redrawn) if it
    would leave an earlier one with less than half of its visible area, so every
    annotated instance stays recognisable.

    Everything is a function of ``(seed, split, image index)``: the same seed gives the
    same files, byte for byte, and image ``i`` of a split does not depend on how many
    images the split has.

    Args:
      image_size: side of the square images, or ``(height, width)``.
      seed: random seed.
      max_shapes: most shapes per image.
      shapes: the categories, names from ``SHAPES`` (ids 1, 2, ... in this order); None =
        ``CATEGORIES`` (circle, square, triangle). Other shapes make a dataset of new
        classes for fine-tuning (``kmask make-shapes --shapes pentagon,hexagon,...``).

    Raises:
      ValueError: a size under 32 pixels, ``max_shapes < 1``, or a name not in ``SHAPES``.
    """

    # Shapes that can be drawn: regular polygons by their number of corners, and the rest.
    SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "ellipse", "rhombus")
    CATEGORIES = (
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 2, "name": "square", "supercategory": "shape"},
        {"id": 3, "name": "triangle", "supercategory": "shape"},
    )

    def __init__(
        self,
        image_size: int | tuple[int, int] = 128,
        seed: int = 0,
        max_shapes: int = 5,
        shapes: Sequence[str] | None = None,
    ) -> None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(height, width) < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be at least 1, got {max_shapes}")
        self.height = int(height)
        self.width = int(width)
        self.seed = int(seed)
        self.max_shapes = int(max_shapes)
        if shapes is not None:
            names = list(shapes)
            if not names or len(set(names)) < len(names) or not set(names) <= set(self.SHAPES):
                raise ValueError(
                    f"shapes must be distinct names of {', '.join(self.SHAPES)}; got {names}"
                )
            self.CATEGORIES = tuple(
                {"id": i + 1, "name": name, "supercategory": "shape"}
                for i, name in enumerate(names)
            )

    def render(self, split: str, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """One image and its instances.

        Returns:
          ``(image, instances)``: uint8 ``[H, W, 3]`` RGB; each instance a dict with
          ``category_id`` and ``mask`` (bool ``[H, W]``, visible part), in drawing order.
        """
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[split], index])
        image = _background(rng, self.height, self.width)
        ys, xs = np.mgrid[0 : self.height, 0 : self.width] + 0.5
        count = int(rng.integers(1, self.max_shapes + 1))
        shapes: list[tuple[int, np.ndarray]] = []  # (category id, full shape mask)
        for _ in range(count):
            for _attempt in range(20):
                category_id, shape = self._random_shape(rng, ys, xs)
                if self._acceptable(shapes, shape):
                    shapes.append((category_id, shape))
                    break
        colours = _distinct_colours(rng, len(shapes), image.reshape(-1, 3).mean(axis=0))
        instances = []
        for i, (category_id, shape) in enumerate(shapes):
            shade = rng.normal(0.0, 6.0, size=image.shape)
            image[shape] = np.clip(colours[i] + shade[shape], 0, 255)
            visible = shape.copy()
            for _, later in shapes[i + 1 :]:
                visible &= ~later
            instances.append({"category_id": category_id, "mask": visible})
        return image.astype(np.uint8), instances

    def _random_shape(
        self, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray
    ) -> tuple[int, np.ndarray]:
        side = min(self.height, self.width)
        radius = rng.uniform(0.08, 0.22) * side
        cy = rng.uniform(0.1, 0.9) * self.height
        cx = rng.uniform(0.1, 0.9) * self.width
        category_id = int(rng.integers(1, len(self.CATEGORIES) + 1))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        name = self.CATEGORIES[category_id - 1]["name"]
        if name == "circle":
            return category_id, (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
        if name == "ellipse":
            minor = radius * rng.uniform(0.4, 0.7)
            along = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
            across = (ys - cy) * np.cos(angle) - (xs - cx) * np.sin(angle)
            return category_id, (along / radius) ** 2 + (across / minor) ** 2 <= 1.0
        corners = _CORNERS[name]
        angles = angle + 2.0 * np.pi * np.arange(corners) / corners
        radii = np.full(corners, radius)
        if name == "rhombus":
            radii[1::2] *= rng.uniform(0.45, 0.7)
        vertices = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        return category_id, _inside_convex_polygon(vertices, ys, xs)

    def _acceptable(self, shapes: list[tuple[int, np.ndarray]], shape: np.ndarray) -> bool:
        """The new shape has pixels, and every earlier shape keeps half its visible area."""
        if shape.sum() < 20:
            return False
        for i, (_, earlier) in enumerate(shapes):
            visible = earlier.copy()
            for _, later in shapes[i + 1 :]:
                visible &= ~later
            if (visible & ~shape).sum() < 0.5 * visible.sum():
                return False
        return True

    def coco(
        self, split: str, num_images: int, progress: bool = False
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The COCO JSON dict of a split and its images (in memory).

        Segmentations are compressed RLE (exact masks); boxes are the tight boxes of the
        visible masks; ``file_name`` is ``{split}/{id:06d}.png``; ids start at 1. Instances
        that carry ``keypoints`` (``[K, 3]`` COCO ``(x, y, v)``) get ``keypoints`` and
        ``num_keypoints`` (labelled ones).
        """
        images, annotations, pixels = [], [], []
        for index in tqdm(range(num_images), desc=f"make-shapes {split}", disable=not progress):
            image, instances = self.render(split, index)
            image_id = index + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{split}/{image_id:06d}.png",
                    "height": self.height,
                    "width": self.width,
                }
            )
            for instance in instances:
                mask = instance["mask"]
                rows = np.flatnonzero(mask.any(axis=1))
                cols = np.flatnonzero(mask.any(axis=0))
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotation = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": instance["category_id"],
                    "bbox": [
                        int(cols[0]),
                        int(rows[0]),
                        int(cols[-1] - cols[0] + 1),
                        int(rows[-1] - rows[0] + 1),
                    ],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
                if "keypoints" in instance:
                    keypoints = np.asarray(instance["keypoints"], np.float64)
                    annotation["keypoints"] = [
                        int(v) if i % 3 == 2 else float(v)
                        for i, v in enumerate(keypoints.reshape(-1))
                    ]
                    annotation["num_keypoints"] = int(np.count_nonzero(keypoints[:, 2] > 0))
                annotations.append(annotation)
            pixels.append(image)
        data = {
            "info": {"description": f"kmask synthetic shapes, seed {self.seed}, split {split}"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in self.CATEGORIES],
        }
        return data, pixels

    def write(
        self,
        out_dir: str | os.PathLike[str],
        num_train: int,
        num_val: int,
        progress: bool = True,
    ) -> dict[str, Path]:
        """Writes ``train.json``, ``val.json`` and ``train/``, ``val/`` PNG images.

        Every file is written under a temporary name and renamed when complete; the JSON
        of a split is written after its images.

        Returns:
          ``{"train": path of train.json, "val": path of val.json}``; images are relative
          to ``out_dir``.
        """
        out_dir = Path(out_dir)
        written = {}
        for split, count in (("train", num_train), ("val", num_val)):
            if count < 0:
                raise ValueError(f"number of {split} images must be >= 0, got {count}")
            (out_dir / split).mkdir(parents=True, exist_ok=True)
            data, pixels = self.coco(split, count, progress=progress)
            for entry, image in zip(data["images"], pixels):
                image_io.write_atomic(out_dir / entry["file_name"], image_io.encode_png(image))
            path = out_dir / f"{split}.json"
            image_io.write_atomic(path, json.dumps(data).encode())
            written[split] = path
        return written


def _inside_convex_polygon(vertices: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Points ``(xs, ys)`` inside the convex polygon with counter-clockwise ``vertices``."""
    inside = np.ones(ys.shape, bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float64 ``[H, W, 3]``: smooth colour field + stripes + noise, muted, in 0..255."""
    coarse = rng.uniform(40, 170, size=(4, 4, 3)).astype(np.float32)
    field = np.stack(
        [
            np.asarray(Image.fromarray(coarse[:, :, c]).resize((width, height), Image.BILINEAR))
            for c in range(3)
        ],
        axis=-1,
    ).astype(np.float64)
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
    field += rng.uniform(5, 20) * stripes[:, :, None]
    field += rng.normal(0, 8, size=field.shape)
    return np.clip(field, 0, 255)


def _distinct_colours(rng: np.random.Generator, count: int, background: np.ndarray) -> np.ndarray:
    """``count`` saturated RGB colours, each far (L1 > 150) from the mean background."""
    colours = []
    while len(colours) < count:
        colour = rng.uniform(0, 255, size=3)
        colour[rng.integers(3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        if np.abs(colour - background).sum() > 150:
            colours.append(colour)
    return np.array(colours).reshape(count, 3)
