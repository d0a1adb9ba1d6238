"""Checks of single COCO JSON fields, run once at load time before any pycocotools call.

pycocotools trusts its input: polygon coordinates far outside the image overflow its
integer arithmetic (a segfault, or gigabytes per polygon), and an RLE whose counts do not
sum to ``height * width`` decodes from uninitialized memory or reads past the end of a
corrupt counts string. Every function here returns None for a usable value and otherwise
a short description of the problem, which the reader reports with the file and the ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Ids are stored as decimal strings of at most 18 digits in TFRecord shards
# (``image/source_id``), so that they read back as the same int64.
MAX_ID = 10**18 - 1
# pycocotools counts pixels in 32-bit unsigned integers.
MAX_PIXELS = 2**32 - 1
# Polygon vertices may lie at most one image size outside the image (rasterizing costs
# time and memory in proportion to the polygon's extent).
POLYGON_MARGIN = 1.0


def is_number(value: Any) -> bool:
    """A finite JSON number (bool excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_int(value: Any, low: int = 0, high: int = MAX_ID) -> int | None:
    """``int(value)`` for an integral number in ``[low, high]`` (bool excluded), else None."""
    if not is_number(value) or value != int(value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def polygon_problem(polygon: Any, height: int, width: int) -> str | None:
    """Why a polygon ``[x1, y1, x2, y2, ...]`` cannot be rasterized, or None.

    Polygons with fewer than 3 points are reported as ``"fewer than 3 points"`` (the reader
    repairs an annotation that has other, valid parts).
    """
    if not isinstance(polygon, list) or not all(is_number(v) for v in polygon):
        return "not a list of finite numbers"
    if len(polygon) < 6 or len(polygon) % 2:
        return "fewer than 3 points"
    xs, ys = polygon[0::2], polygon[1::2]
    if (
        min(xs) < -POLYGON_MARGIN * width
        or max(xs) > (1.0 + POLYGON_MARGIN) * width
        or min(ys) < -POLYGON_MARGIN * height
        or max(ys) > (1.0 + POLYGON_MARGIN) * height
    ):
        return (
            f"coordinates x in [{min(xs):g}, {max(xs):g}], y in [{min(ys):g}, {max(ys):g}] "
            f"lie far outside the {width}x{height} image"
        )
    return None


def decode_rle_string(counts: str | bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or
    None when the string is corrupt: a character outside ``'0'..'o'``, a run that does not
    end, a negative or 32-bit-overflowing run length."""
    if isinstance(counts, str):
        if not counts.isascii():
            return None
        counts = counts.encode("ascii")
    data = bytes(counts)
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(data) or shift > 30:
                return None
            code = data[position] - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if not 0 <= value < 2**32:
            return None
        runs.append(value)
    return runs


def rle_problem(segmentation: Mapping[str, Any], height: int, width: int) -> str | None:
    """Why an RLE ``{"size": [h, w], "counts": ...}`` does not describe a mask of the
    image, or None. ``counts`` is a list of run lengths (uncompressed) or a string."""
    size = segmentation.get("size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or any(as_int(s, 1, MAX_PIXELS) is None for s in size)
    ):
        return f"'size' must be [height, width] as integers, got {size!r}"
    if [int(s) for s in size] != [height, width]:
        return f"size {size} differs from the image's {[height, width]}"
    counts = segmentation.get("counts")
    if isinstance(counts, list):
        if not all(as_int(c, 0, MAX_PIXELS) is not None for c in counts):
            return "'counts' must be run lengths >= 0"
        runs = [int(c) for c in counts]
    elif isinstance(counts, (str, bytes)):
        decoded = decode_rle_string(counts)
        if decoded is None:
            return "corrupt compressed 'counts' string"
        runs = decoded
    else:
        return f"'counts' must be a list or a string, got {type(counts).__name__}"
    if sum(runs) != height * width:
        return f"run lengths sum to {sum(runs)}, not height*width = {height * width}"
    return None


def keypoints_problem(keypoints: Any, num_keypoints: int) -> str | None:
    """Why a COCO keypoint list ``[x1, y1, v1, ...]`` is unusable, or None. A list of the
    wrong length is not reported here (the reader refuses it, naming the category)."""
    if not isinstance(keypoints, list) or not all(is_number(v) for v in keypoints):
        return "not a list of finite numbers"
    if len(keypoints) == 3 * num_keypoints and any(v not in (0, 1, 2) for v in keypoints[2::3]):
        return "visibility flags must be 0, 1 or 2"
    return None
