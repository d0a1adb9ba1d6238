"""NumPy reference of the box-frame mask crop (``transforms.crop_masks_to_boxes``): the
value of each cell written point by point, and the check of a binary crop against it."""

from __future__ import annotations

import numpy as np


def bilinear_reference(mask: np.ndarray, box, mask_size: int) -> np.ndarray:
    """Float64 value of each cell of the box-frame crop, written point by point.

    Cell (i, j) samples continuous point y = y1 + (i + .5) h / M, x = x1 + (j + .5) w / M;
    pixel p's value sits at its centre p + .5; outside the centres the edge value holds.
    """
    height, width = mask.shape
    y1, x1, y2, x2 = (float(v) for v in box)
    out = np.zeros((mask_size, mask_size))
    for i in range(mask_size):
        for j in range(mask_size):
            y = y1 + (i + 0.5) * (y2 - y1) / mask_size - 0.5
            x = x1 + (j + 0.5) * (x2 - x1) / mask_size - 0.5
            y = min(max(y, 0.0), height - 1.0)
            x = min(max(x, 0.0), width - 1.0)
            r0, c0 = int(np.floor(y)), int(np.floor(x))
            r1, c1 = min(r0 + 1, height - 1), min(c0 + 1, width - 1)
            fy, fx = y - r0, x - c0
            out[i, j] = (
                mask[r0, c0] * (1 - fy) * (1 - fx)
                + mask[r0, c1] * (1 - fy) * fx
                + mask[r1, c0] * fy * (1 - fx)
                + mask[r1, c1] * fy * fx
            )
    return out


def assert_crop_matches(actual: np.ndarray, reference: np.ndarray, tolerance: float = 1e-3) -> None:
    """actual == (reference >= .5) wherever the reference is not within tolerance of .5."""
    decided = np.abs(reference - 0.5) > tolerance
    expected = (reference >= 0.5).astype(np.uint8)
    mismatches = np.argwhere(decided & (actual != expected))
    assert not len(mismatches), (
        f"{len(mismatches)} cells differ, first at {mismatches[:5].tolist()}"
    )
