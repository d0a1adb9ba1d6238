"""``ImageDetections``: what ``Detector.detect`` returns for one image."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from kmask.data.category_map import CategoryMap
from kmask.evaluation.coco_results import to_coco_results
from kmask.visualization import draw_image_detections


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDetections:
    """One image's detections in its source pixels, best score first.

    Every array has one row per detection (``n``, possibly 0); the values are those of
    ``kmask predict``'s ``detections.json`` and of the SavedModel's outputs for the same
    image (same boxes, scores, category ids, masks and keypoints), before rounding.

    Attributes:
      image: the source image, uint8 ``[H, W, 3]`` RGB (what ``draw`` draws on).
      source: the file it was read from, or None for bytes and arrays.
      boxes: float32 ``[n, 4]`` ``(y1, x1, y2, x2)`` in source pixels (continuous
        coordinates: a box around pixel ``(0, 0)`` alone is ``(0, 0, 1, 1)``), clipped to
        the image.
      scores: float32 ``[n]``, each ``>= score_threshold``.
      class_ids: int32 ``[n]``, the dataset's category ids (``categories.json``; COCO ids
        for COCO models), as ``detection_classes`` of the SavedModel.
      class_names: ``n`` category names.
      masks: bool ``[n, H, W]`` pasted at source size (mask threshold of the config), or
        None for a box-only model or when RLE was asked for.
      rles: ``n`` COCO compressed RLEs ``{"size": [H, W], "counts": str}`` (pycocotools'
        ``mask.decode`` reads them) when asked for (``mask_format="rle"``), else None.
      keypoints: float32 ``[n, K, 3]`` ``(x, y, score)`` in continuous source-pixel
        coordinates, for a Keypoint R-CNN, else None.
      categories: the model's classes (names, ids, keypoint skeleton).
      score_threshold: the threshold the detections passed.
    """

    image: np.ndarray
    source: str | None
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: list[str]
    masks: np.ndarray | None
    rles: list[dict[str, Any]] | None
    keypoints: np.ndarray | None
    categories: CategoryMap
    score_threshold: float

    @classmethod
    def from_classes(
        cls,
        image: np.ndarray,
        source: str | None,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        categories: CategoryMap,
        score_threshold: float,
        masks: np.ndarray | None = None,
        rles: list[dict[str, Any]] | None = None,
        keypoints: np.ndarray | None = None,
    ) -> ImageDetections:
        """The detections of the model's 0-based ``classes [n]``, with their category ids
        and names read from ``categories``; boxes and scores as float32."""
        class_ids = np.array([categories.to_original_id(int(c)) for c in classes], np.int32)
        names = dict(zip(categories.category_ids, categories.category_names))
        return cls(
            image=image,
            source=source,
            boxes=np.asarray(boxes, np.float32),
            scores=np.asarray(scores, np.float32),
            class_ids=class_ids,
            class_names=[names[int(i)] for i in class_ids],
            masks=masks,
            rles=rles,
            keypoints=keypoints,
            categories=categories,
            score_threshold=score_threshold,
        )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the source image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def as_predictor_dict(self, image_id: int, decode_rles: bool = True) -> dict[str, Any]:
        """These detections in ``Predictor.image_detections``' form (0-based ``classes``,
        ``masks`` decoded from ``rles`` when they are RLE, or the ``rles`` as they are
        with ``decode_rles=False``), what ``to_coco``, ``COCOEvaluator.add_image`` and
        the drawing functions of ``kmask.visualization`` take."""
        detections: dict[str, Any] = {
            "image_id": image_id,
            "boxes": self.boxes,
            "scores": self.scores,
            "classes": np.array(
                [self.categories.contiguous_id(int(i)) for i in self.class_ids], np.int32
            ),
        }
        if self.masks is not None:
            detections["masks"] = self.masks
        elif self.rles is not None and not decode_rles:
            detections["rles"] = self.rles
        elif self.rles is not None:
            detections["masks"] = np.zeros((0, *self.image_size), bool)
            if self.rles:
                decoded = mask_utils.decode(
                    [dict(rle, counts=rle["counts"].encode()) for rle in self.rles]
                )
                detections["masks"] = np.transpose(decoded, (2, 0, 1)).astype(bool)
        if self.keypoints is not None:
            detections["keypoints"] = self.keypoints
        return detections

    def to_coco(self, image_id: int = 0) -> list[dict[str, Any]]:
        """COCO result dicts (``bbox [x, y, w, h]``, ``category_id``, ``score``, RLE
        ``segmentation`` with masks, ``keypoints`` as COCO pixel indices), the format of
        ``kmask predict``'s ``detections.json`` and of ``COCOeval``'s results."""
        detections = self.as_predictor_dict(image_id, decode_rles=False)
        return to_coco_results(detections, self.categories)

    def draw(self) -> np.ndarray:
        """The image with the masks, boxes, class names, scores and keypoints drawn over it
        (``kmask.visualization``; what ``kmask predict`` writes as PNG), uint8 RGB,
        enlarged by an integer factor when the image is small. RLE masks are decoded one
        at a time as they are drawn (a tiled result of a huge image never holds them all)."""
        detections = self.as_predictor_dict(0, decode_rles=False)
        if "rles" in detections:
            detections["masks"] = _DecodedOneByOne(detections.pop("rles"))
        return draw_image_detections(
            self.image,
            detections,
            self.categories.category_names,
            self.score_threshold,
            skeleton=self.categories.keypoint_skeleton,
        )


class _DecodedOneByOne:
    """COCO RLEs (``str`` counts) as a sequence of bool ``[H, W]`` masks, each decoded when
    it is indexed."""

    def __init__(self, rles: list[dict[str, Any]]) -> None:
        self.rles = rles

    def __len__(self) -> int:
        return len(self.rles)

    def __getitem__(self, index: int) -> np.ndarray:
        rle = self.rles[index]
        return mask_utils.decode(dict(rle, counts=rle["counts"].encode())).astype(bool)
