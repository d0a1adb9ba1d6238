"""One image of a COCO dataset with its validated annotations."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ImageRecord:
    """An image entry of a COCO JSON and its usable annotations (crowd ones included).

    Attributes:
      image_id: COCO image id.
      file_name: path relative to the images folder.
      height, width: image size from the JSON.
      boxes: float64 ``[n, 4]`` ``(y1, x1, y2, x2)`` in pixels, clipped to the image,
        positive area.
      category_ids: int64 ``[n]`` original COCO category ids.
      classes: int32 ``[n]`` contiguous 0-based class ids.
      is_crowd: bool ``[n]``.
      areas: float64 ``[n]`` COCO ``area`` (box area when the JSON has none).
      segmentations: ``n`` COCO segmentations (polygon list with only valid polygons,
        RLE dict, or None for box-only annotations whose mask is the box).
      keypoints: float64 ``[n, K, 3]`` ``(x, y, v)`` exactly as in COCO (integer pixel
        indices); ``K = 0`` when the dataset has no keypoints.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    category_ids: np.ndarray
    classes: np.ndarray
    is_crowd: np.ndarray
    areas: np.ndarray
    segmentations: tuple[Any, ...]
    keypoints: np.ndarray

    @property
    def num_instances(self) -> int:
        """Number of non-crowd instances (the ones that become training targets)."""
        return int(np.count_nonzero(~self.is_crowd))
