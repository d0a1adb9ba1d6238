"""Scalar NumPy reference of RoIAlign, written from the definition (torchvision / ONNX avg mode).

Independent of kmask: plain Python loops over RoIs, bins and samples, in float64.
Boxes are (y1, x1, y2, x2) in input pixels; features NHWC.
"""

from __future__ import annotations

import math

import numpy as np

MAX_GRID = 256  # kmask caps the adaptive grid per axis (roi_align_common.h)


def _bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear sample of feature [H, W, C] at (y, x); zeros outside [-1, H] x [-1, W]."""
    height, width, channels = feature.shape
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return np.zeros(channels)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[y_low, x_low]
        + hy * lx * feature[y_low, x_high]
        + ly * hx * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def roi_align_reference(
    features: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> np.ndarray:
    """features [B,H,W,C], boxes [K,4] (y1,x1,y2,x2), box_indices [K] -> [K,oh,ow,C] float64."""
    features = np.asarray(features, np.float64)
    out_h, out_w = output_size
    num_boxes = len(boxes)
    channels = features.shape[-1]
    output = np.zeros((num_boxes, out_h, out_w, channels))
    offset = 0.5 if aligned else 0.0
    for k in range(num_boxes):
        y1, x1, y2, x2 = (float(v) for v in boxes[k])
        if not all(math.isfinite(v) for v in (y1, x1, y2, x2)):
            continue
        start_h, start_w = y1 * spatial_scale - offset, x1 * spatial_scale - offset
        roi_h = y2 * spatial_scale - offset - start_h
        roi_w = x2 * spatial_scale - offset - start_w
        if not aligned:
            roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        if sampling_ratio > 0:
            grid_h = grid_w = sampling_ratio
        else:
            grid_h = min(max(math.ceil(roi_h / out_h), 0), MAX_GRID)
            grid_w = min(max(math.ceil(roi_w / out_w), 0), MAX_GRID)
        count = max(grid_h * grid_w, 1)
        feature = features[int(box_indices[k])]
        for ph in range(out_h):
            for pw in range(out_w):
                total = np.zeros(channels)
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += _bilinear(feature, y, x)
                output[k, ph, pw] = total / count
    return output
