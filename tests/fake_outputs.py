"""A tiny hand-made COCO ground truth, hand-made model outputs for the three detector modes
(Mask R-CNN, Faster R-CNN, RPN only) and a fake model returning them: the evaluation,
prediction and visualization code is tested without building a real model.

Everything here is written in the source images' pixels and COCO ``[x, y, w, h]``; the
model outputs are the same boxes in a resized frame twice as large, ``(y1, x1, y2, x2)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

SCALE = 2.0  # resized / source pixels
# Category ids are not contiguous: class 0 <-> id 3 ("cat"), class 1 <-> id 8 ("dog").
CATEGORIES = [{"id": 8, "name": "dog"}, {"id": 3, "name": "cat"}]
CLASS_OF_ID = {3: 0, 8: 1}
# (image id, height, width)
IMAGES = [(7, 200, 240), (9, 40, 40)]


def _annotation(
    ann_id: int, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0
) -> dict[str, Any]:
    x, y, w, h = bbox
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": float(w * h),
        "iscrowd": iscrowd,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


GROUND_TRUTH = {
    "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, h, w in IMAGES],
    "categories": CATEGORIES,
    "annotations": [
        _annotation(1, 7, 3, [5, 5, 10, 10]),  # small cat
        _annotation(2, 7, 8, [40, 10, 40, 30]),  # medium dog (1200 px)
        _annotation(3, 7, 8, [100, 60, 120, 100]),  # large dog (12000 px)
        _annotation(4, 7, 3, [10, 150, 30, 30], iscrowd=1),  # crowd: neither hit nor miss
        _annotation(5, 9, 3, [8, 8, 20, 16]),  # small cat
        _annotation(6, 9, 8, [2, 28, 10, 10]),  # small dog
    ],
}

# Detections per image: (category id, [x, y, w, h], score, mask kind), "full" = the whole
# box, "empty" = no pixel (a right box with a wrong mask).
DETECTIONS = {
    7: [
        (3, [150, 10, 30, 30], 0.95, "full"),  # false positive
        (3, [5, 5, 10, 10], 0.90, "full"),  # cat exactly
        (8, [40, 10, 40, 30], 0.80, "full"),  # dog exactly
        (8, [100, 60, 120, 83], 0.60, "full"),  # large dog at IoU 0.83
        (3, [40, 10, 40, 30], 0.50, "full"),  # the medium dog called a cat
    ],
    9: [
        (3, [8, 8, 20, 16], 0.70, "empty"),  # cat box right, mask empty
        (8, [3, 27, 10, 10], 0.40, "full"),  # dog at IoU 0.68
    ],
}

# Proposals per image, best first: ([x, y, w, h], objectness). Each proposal overlaps at
# most one ground truth and no IoU sits on a threshold, so the one-to-one greedy matching
# of ProposalRecall and COCOeval's score-ordered matching must agree.
PROPOSALS = {
    7: [
        ([5, 5, 10, 10], 0.99),  # A at 1.0
        ([40, 10, 40, 25], 0.95),  # B at 0.833
        ([100, 60, 120, 73], 0.90),  # C at 0.73
        ([100, 60, 120, 93], 0.85),  # C at 0.93
        ([180, 170, 20, 20], 0.50),  # nothing
        ([40, 10, 40, 30], 0.30),  # B at 1.0
    ],
    9: [
        ([8, 8, 20, 13], 0.80),  # E at 0.8125
        ([3, 28, 10, 10], 0.60),  # F at 0.818
        ([30, 0, 8, 8], 0.10),  # nothing
    ],
}

MASK_SIZE = 8
PADDED_DETECTIONS = 6
PADDED_PROPOSALS = 8


def write_ground_truth(folder: Path) -> Path:
    path = folder / "gt.json"
    path.write_text(json.dumps(GROUND_TRUTH))
    return path


def _resized_box(xywh: list[float]) -> list[float]:
    x, y, w, h = xywh
    return [SCALE * y, SCALE * x, SCALE * (y + h), SCALE * (x + w)]


def model_outputs(mode: str, empty: bool = False) -> dict[str, np.ndarray]:
    """The ``predict_step`` outputs of the two images for ``mode`` (``"mask_rcnn"``,
    ``"faster_rcnn"``, ``"rpn"``), padded with junk beyond the valid counts; ``empty``:
    ``num_detections`` and ``num_proposals`` 0."""
    batch = len(IMAGES)
    outputs: dict[str, np.ndarray] = {
        "image_id": np.array([i for i, _, _ in IMAGES], np.int64),
        "image_size": np.array([[SCALE * h, SCALE * w] for _, h, w in IMAGES], np.int32),
        "original_size": np.array([[h, w] for _, h, w in IMAGES], np.int32),
    }
    # Junk padding: a high-scoring box that must never be read.
    boxes = np.tile(np.array([1, 1, 30, 30], np.float32), (batch, PADDED_PROPOSALS, 1))
    scores = np.full((batch, PADDED_PROPOSALS), 0.999, np.float32)
    counts = np.zeros(batch, np.int32)
    for b, (image_id, _, _) in enumerate(IMAGES):
        for k, (box, score) in enumerate(PROPOSALS[image_id]):
            boxes[b, k], scores[b, k] = _resized_box(box), score
        counts[b] = 0 if empty else len(PROPOSALS[image_id])
    outputs.update(proposals=boxes, proposal_scores=scores, num_proposals=counts)
    if mode == "rpn":
        return outputs
    boxes = np.tile(np.array([2, 2, 40, 40], np.float32), (batch, PADDED_DETECTIONS, 1))
    scores = np.full((batch, PADDED_DETECTIONS), 0.999, np.float32)
    classes = np.ones((batch, PADDED_DETECTIONS), np.int32)
    masks = np.ones((batch, PADDED_DETECTIONS, MASK_SIZE, MASK_SIZE), np.float32)
    counts = np.zeros(batch, np.int32)
    for b, (image_id, _, _) in enumerate(IMAGES):
        for k, (category, box, score, kind) in enumerate(DETECTIONS[image_id]):
            boxes[b, k], scores[b, k] = _resized_box(box), score
            classes[b, k] = CLASS_OF_ID[category]
            masks[b, k] = 1.0 if kind == "full" else 0.0
        counts[b] = 0 if empty else len(DETECTIONS[image_id])
    outputs.update(
        detection_boxes=boxes,
        detection_scores=scores,
        detection_classes=classes,
        num_detections=counts,
    )
    if mode == "mask_rcnn":
        outputs["detection_masks"] = masks
    return outputs


def detection_results() -> list[dict[str, Any]]:
    """The detections as COCO results (source pixels, original ids), written by hand."""
    return [
        {"image_id": image_id, "category_id": category, "bbox": box, "score": score}
        for image_id, entries in DETECTIONS.items()
        for category, box, score, _ in entries
    ]


def proposal_results() -> list[dict[str, Any]]:
    return [
        {"image_id": image_id, "bbox": box, "score": score}
        for image_id, entries in PROPOSALS.items()
        for box, score in entries
    ]


class FixedOutputModel(keras.Model):
    """A stand-in for ``MaskRCNN``: ``predict_step`` returns, for each image of the batch,
    the fixed outputs of the image with its ``image_id`` (the first image's for an unknown
    id or none), with the features' ``image_id``, ``image_size`` and ``original_size``
    passed through."""

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        super().__init__()
        self._fixed = {key: np.asarray(value) for key, value in outputs.items()}

    def predict_step(self, data: Any) -> dict[str, tf.Tensor]:
        features = data[0] if isinstance(data, (tuple, list)) else data
        batch = tf.shape(features["images"])[0]
        rows = tf.zeros([batch], tf.int64)
        if "image_id" in features and "image_id" in self._fixed:
            same = tf.equal(features["image_id"][:, None], self._fixed["image_id"][None, :])
            rows = tf.argmax(tf.cast(same, tf.int32), axis=1)
        outputs = {key: tf.gather(value, rows) for key, value in self._fixed.items()}
        for key in ("image_id", "image_size", "original_size"):
            if key in features:
                outputs[key] = features[key]
        return outputs


def features_batch() -> dict[str, np.ndarray]:
    """A features batch of the two images (black, resized frame)."""
    height = int(SCALE * max(h for _, h, _ in IMAGES))
    width = int(SCALE * max(w for _, _, w in IMAGES))
    outputs = model_outputs("rpn")
    return {
        "images": np.zeros((len(IMAGES), height, width, 3), np.float32),
        "image_id": outputs["image_id"],
        "image_size": outputs["image_size"],
        "original_size": outputs["original_size"],
    }
