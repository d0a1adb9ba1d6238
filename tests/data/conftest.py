"""Helpers of the data tests: tiny COCO datasets written to a temporary folder, and a
NumPy reference of the box-frame mask crop."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip

CATEGORIES = [
    {"id": 7, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person", "keypoints": COCO_KEYPOINTS},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_coco(
    root: Path,
    images: list[tuple[dict, bytes | None]],
    annotations: list[dict],
    categories: list[dict] | None = None,
    name: str = "ann.json",
) -> Path:
    """Writes image files (None = leave missing) under root/images and the JSON at root/name."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for entry, data in images:
        if data is not None:
            (root / "images" / entry["file_name"]).write_bytes(data)
    path = root / name
    path.write_text(
        json.dumps(
            {
                "images": [entry for entry, _ in images],
                "annotations": [dict(a, id=a.get("id", i + 1)) for i, a in enumerate(annotations)],
                "categories": categories if categories is not None else CATEGORIES,
            }
        )
    )
    return path


@pytest.fixture
def mixed_coco(tmp_path: Path) -> tuple[Path, Path, dict]:
    """Three images with polygon, compressed RLE, uncompressed RLE, box-only, crowd and
    keypoint annotations, and one image without annotations. Returns (json, images, info)
    where info has the full masks keyed by annotation id."""
    rng = np.random.default_rng(0)
    h1, w1 = 48, 64
    h2, w2 = 40, 56
    rect = np.zeros((h2, w2), np.uint8)
    rect[5:20, 10:31] = 1
    blob = np.zeros((h2, w2), np.uint8)
    blob[22:37, 30:50] = 1
    blob[25:30, 35:40] = 0
    crowd = np.zeros((h1, w1), np.uint8)
    crowd[30:46, 2:20] = 1
    keypoints = [0] * 51
    keypoints[3:6] = [20, 10, 2]  # left_eye
    keypoints[6:9] = [25, 11, 1]  # right_eye
    images = [
        (
            {"id": 11, "file_name": "a.png", "height": h1, "width": w1},
            png_bytes(random_image(rng, h1, w1)),
        ),
        (
            {"id": 12, "file_name": "b.png", "height": h2, "width": w2},
            png_bytes(random_image(rng, h2, w2)),
        ),
        (
            {"id": 13, "file_name": "c.png", "height": 32, "width": 32},
            png_bytes(random_image(rng, 32, 32)),
        ),
    ]
    annotations = [
        {"id": 101, "image_id": 11, "category_id": 1, "bbox": [10.5, 4.25, 30, 28],
         "segmentation": [[10.5, 4.25, 40.5, 4.25, 40.5, 32.25, 25, 20, 10.5, 32.25]],
         "area": 700.0, "iscrowd": 0, "keypoints": keypoints, "num_keypoints": 2},
        {"id": 102, "image_id": 11, "category_id": 3, "bbox": [2, 30, 18, 16],
         "segmentation": uncompressed_rle(crowd), "area": 288.0, "iscrowd": 1},
        {"id": 103, "image_id": 11, "category_id": 7, "bbox": [44, 2, 16, 9], "area": 144.0,
         "iscrowd": 0, "segmentation": []},
        {"id": 201, "image_id": 12, "category_id": 7, "bbox": [10, 5, 21, 15],
         "segmentation": uncompressed_rle(rect), "area": float(rect.sum()), "iscrowd": 0},
        {"id": 202, "image_id": 12, "category_id": 3, "bbox": [30, 22, 20, 15],
         "segmentation": compressed_rle(blob), "area": float(blob.sum()), "iscrowd": 0},
    ]  # fmt: skip
    path = write_coco(tmp_path, images, annotations)
    return path, tmp_path / "images", {"rect": rect, "blob": blob, "crowd": crowd}


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
