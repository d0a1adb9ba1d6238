"""A synthetic instance segmentation dataset of coloured shapes (``kmask make-shapes``)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from kmask.data import image_io
from kmask.data.placed_rle import placed_rle

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

    With ``object_size`` the shapes have a size in pixels instead of a share of the
    image: a large ``image_size`` and many shapes make a scene for tiled inference
    (``kmask make-shapes --scene``); shapes and their masks are then drawn in their own
    window, so memory and time grow with the shapes, not with shapes x image.

    Args:
      image_size: side of the square images, or ``(height, width)``.
      seed: random seed.
      max_shapes: most shapes per image.
      shapes: the categories, names from ``SHAPES`` (ids 1, 2, ... in this order); None =
        ``CATEGORIES`` (circle, square, triangle). Other shapes make a dataset of new
        classes for fine-tuning (``kmask make-shapes --shapes pentagon,hexagon,...``).
      object_size: ``(smallest, largest)`` shape diameter in pixels (the circumscribed
        circle's), or None for 16% to 44% of the shorter image side.

    Raises:
      ValueError: a size under 32 pixels, ``max_shapes < 1``, a name not in ``SHAPES``, or
        an ``object_size`` that is not ``0 < smallest <= largest``.
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
        object_size: tuple[float, float] | None = None,
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
        if object_size is not None and not 0 < object_size[0] <= object_size[1]:
            raise ValueError(
                f"object_size must be (smallest, largest) diameters with 0 < smallest <= "
                f"largest, got {object_size}"
            )
        self.object_size = object_size
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
          ``category_id``, ``mask`` (bool ``[h, w]``, the visible part within the shape's
          window) and ``top``, ``left`` (where ``mask[0, 0]`` lies in the image), in
          drawing order.
        """
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[split], index])
        image = _background(rng, self.height, self.width)
        count = int(rng.integers(1, self.max_shapes + 1))
        pieces: list[_Piece] = []
        for _ in range(count):
            for _attempt in range(20):
                piece = self._random_shape(rng)
                if _acceptable(pieces, piece):
                    _place(pieces, piece)
                    break
        colours = _distinct_colours(rng, len(pieces), image.reshape(-1, 3).mean(axis=0))
        for colour, piece in zip(colours, pieces):
            window = image[piece.rows, piece.cols]
            # Relative sizes draw the shading over the whole image, as before scenes
            # existed, so the datasets made then come out byte for byte the same.
            if self.object_size:
                shade = rng.normal(0.0, 6.0, size=window.shape)
            else:
                shade = rng.normal(0.0, 6.0, size=image.shape)[piece.rows, piece.cols]
            window[piece.mask] = np.clip(colour + shade[piece.mask], 0, 255)
        instances = [
            {"category_id": p.category_id, "mask": p.visible, "top": p.top, "left": p.left}
            for p in pieces
        ]
        return image.astype(np.uint8), instances

    def _random_shape(self, rng: np.random.Generator) -> _Piece:
        """A random shape, its mask drawn in the window of its circumscribed circle."""
        if self.object_size is None:
            radius = rng.uniform(0.08, 0.22) * min(self.height, self.width)
        else:
            radius = rng.uniform(*self.object_size) / 2
        cy = rng.uniform(0.1, 0.9) * self.height
        cx = rng.uniform(0.1, 0.9) * self.width
        category_id = int(rng.integers(1, len(self.CATEGORIES) + 1))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        top, left = max(0, int(cy - radius) - 1), max(0, int(cx - radius) - 1)
        bottom = min(self.height, int(np.ceil(cy + radius)) + 1)
        right = min(self.width, int(np.ceil(cx + radius)) + 1)
        ys, xs = np.mgrid[top:bottom, left:right] + 0.5
        name = self.CATEGORIES[category_id - 1]["name"]
        if name == "circle":
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
        elif name == "ellipse":
            minor = radius * rng.uniform(0.4, 0.7)
            along = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
            across = (ys - cy) * np.cos(angle) - (xs - cx) * np.sin(angle)
            mask = (along / radius) ** 2 + (across / minor) ** 2 <= 1.0
        else:
            corners = _CORNERS[name]
            angles = angle + 2.0 * np.pi * np.arange(corners) / corners
            radii = np.full(corners, radius)
            if name == "rhombus":
                radii[1::2] *= rng.uniform(0.45, 0.7)
            vertices = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            mask = _inside_convex_polygon(vertices, ys, xs)
        return _Piece(category_id, top, left, mask)

    def coco(
        self, split: str, num_images: int, progress: bool = False
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        """The COCO JSON dict of a split and its images (in memory), from ``render``.

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
                mask, top, left = instance["mask"], instance["top"], instance["left"]
                rows = np.flatnonzero(mask.any(axis=1)) + top
                cols = np.flatnonzero(mask.any(axis=0)) + left
                rle = placed_rle(mask, top, left, self.height, self.width)
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
                    "segmentation": rle,
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
        """Writes ``train.json``, ``val.json`` and ``train/``, ``val/`` PNG images
        (``write_split`` of each).

        Returns:
          ``{"train": path of train.json, "val": path of val.json}``; images are relative
          to ``out_dir``.
        """
        return {
            split: self.write_split(out_dir, split, count, progress)
            for split, count in (("train", num_train), ("val", num_val))
        }

    def write_split(
        self,
        out_dir: str | os.PathLike[str],
        split: str,
        num_images: int,
        progress: bool = True,
    ) -> Path:
        """Writes ``{split}.json`` and its PNG images under ``{split}/``.

        Every file is written under a temporary name and renamed when complete; the JSON
        is written after the images.

        Returns:
          the JSON file; image paths in it are relative to ``out_dir``.
        """
        if num_images < 0:
            raise ValueError(f"number of {split} images must be >= 0, got {num_images}")
        out_dir = Path(out_dir)
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        data, pixels = self.coco(split, num_images, progress=progress)
        for entry, image in zip(data["images"], pixels):
            image_io.write_atomic(out_dir / entry["file_name"], image_io.encode_png(image))
        path = out_dir / f"{split}.json"
        image_io.write_atomic(path, json.dumps(data).encode())
        return path


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


@dataclasses.dataclass
class _Piece:
    """A drawn shape: bool ``mask [h, w]`` with ``mask[0, 0]`` at ``(top, left)`` of the
    image, and ``visible``, the part of it that no later piece covers."""

    category_id: int
    top: int
    left: int
    mask: np.ndarray
    visible: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.visible = self.mask.copy()

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.mask.shape[0])

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.mask.shape[1])


def _overlap(a: _Piece, b: _Piece) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """The windows' common rectangle in ``a``'s and in ``b``'s window, None when apart."""
    top, left = max(a.top, b.top), max(a.left, b.left)
    bottom, right = min(a.rows.stop, b.rows.stop), min(a.cols.stop, b.cols.stop)
    if bottom <= top or right <= left:
        return None
    return (
        (slice(top - a.top, bottom - a.top), slice(left - a.left, right - a.left)),
        (slice(top - b.top, bottom - b.top), slice(left - b.left, right - b.left)),
    )


def _acceptable(pieces: list[_Piece], new: _Piece) -> bool:
    """The new piece has 20 pixels, and every earlier one keeps half its visible area."""
    if new.mask.sum() < 20:
        return False
    for piece in pieces:
        common = _overlap(piece, new)
        if common is None:
            continue
        covered = (piece.visible[common[0]] & new.mask[common[1]]).sum()
        visible = piece.visible.sum()
        if visible - covered < 0.5 * visible:
            return False
    return True


def _place(pieces: list[_Piece], new: _Piece) -> None:
    """Draws ``new`` over ``pieces``: their visible parts lose what it covers."""
    for piece in pieces:
        common = _overlap(piece, new)
        if common is not None:
            piece.visible[common[0]] &= ~new.mask[common[1]]
    pieces.append(new)
