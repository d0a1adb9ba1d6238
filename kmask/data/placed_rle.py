"""``placed_rle``: a small mask placed in a large image as COCO RLE, without ever holding
the large image's mask."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def placed_rle(mask: np.ndarray, top: int, left: int, height: int, width: int) -> dict[str, Any]:
    """The compressed COCO RLE of an ``height x width`` image that is zero except for
    ``mask`` with its top-left pixel at ``(top, left)``.

    The run lengths are computed from the foreground pixels of ``mask`` alone (COCO RLE runs
    down the columns: pixel ``(y, x)`` is number ``x * height + y``), so memory is bounded by
    ``mask``'s size, never by the image's.

    Args:
      mask: bool ``[h, w]``; it must fit: ``0 <= top``, ``top + h <= height``, the same for
        ``left`` and ``width``.
      top, left: where ``mask[0, 0]`` lands in the image.
      height, width: the image's size.

    Returns:
      ``{"size": [height, width], "counts": str}`` (pycocotools' ``mask.decode`` reads it
      after ``counts.encode()``).

    Raises:
      ValueError: a mask that does not fit in the image.
    """
    mask = np.asarray(mask, bool)
    rows, cols = mask.shape
    if top < 0 or left < 0 or top + rows > height or left + cols > width:
        raise ValueError(
            f"a {rows}x{cols} mask at ({top}, {left}) does not fit a {height}x{width} image"
        )
    xs, ys = np.nonzero(mask.T)  # column-major order: sorted by x, then y
    positions = (xs.astype(np.int64) + left) * height + ys + top
    total = height * width
    if positions.size == 0:
        counts = np.array([total], np.int64)
    else:
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts = positions[np.r_[0, breaks]]
        ends = positions[np.r_[breaks - 1, positions.size - 1]] + 1
        edges = np.stack([starts, ends], axis=1).reshape(-1)
        counts = np.diff(np.r_[0, edges, total])
        if counts[-1] == 0:  # foreground up to the last pixel: no closing run of zeros
            counts = counts[:-1]
    rle = mask_utils.frPyObjects(
        {"size": [height, width], "counts": counts.tolist()}, height, width
    )
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
