"""``TiledDetection``: a ``Detector`` run over an image far larger than its training size as
overlapping tiles at native resolution, with the tiles' detections merged into one result."""

from __future__ import annotations

from typing import Any

import numpy as np

from kmask.data import transforms
from kmask.data.category_map import CategoryMap
from kmask.data.placed_rle import placed_rle
from kmask.evaluation.detector_mode import DetectorMode
from kmask.evaluation.image_detections import ImageDetections
from kmask.evaluation.predictor import Predictor
from kmask.evaluation.proposal_recall import box_iou

# Most overlap a tiling takes: 0.9 already runs each pixel through about 100 tiles.
MAX_OVERLAP = 0.9


class TiledDetection:
    """Detections of a large image from square tiles, in the image's source pixels.

    Example::

        detector = kmask.load_model("runs/shapes_tiny")
        result = detector.detect(rgb_4000x3000, tile=512)  # ImageDetections, COCO RLE masks
        # the same:
        tiled = TiledDetection(detector.predictor, detector.categories, tile=512)
        result = tiled.detect(rgb_4000x3000, score_threshold=detector.score_threshold)

    **Tiles.** Along each axis tiles of ``tile`` px start every ``tile - round(overlap *
    tile)`` px; the last one is moved back to end at the image border, so every tile has the
    same size (an image side shorter than ``tile`` gives one tile of that side). Each tile
    runs at native resolution: its features are built here (pixels as they are, zero
    padding to the config's ``size_divisibility``), not by the config's resizing, whose
    ``data.min_size`` / ``max_size`` describe whole training images and would rescale each
    tile (a 512 px tile under ``min_size=800`` would be enlarged by 1.56 and its objects
    with it). Tiles run ``batch_size`` at a time through
    ``Predictor.predict_batch``; each tile's detections are mapped to source pixels by
    adding the tile's offset.

    **Merge.** Each tile has a core: the tile less half the overlap with each neighbour
    (the boundary between two neighbours is the middle of their shared strip; the image's
    own borders have no margin), so the cores partition the image. A tile's detection is
    kept only if the centre of its box lies in the tile's core; then class-wise greedy NMS
    at IoU ``nms_iou`` (0.5, the model's own per-class NMS) runs across all tiles. An
    object at most ``overlap * tile`` px wide and tall lies whole inside the tile whose
    core holds its centre, so that tile sees it whole; a neighbour sees at most a cut
    piece, whose box centre lies within half the piece's width of the cut, in that
    neighbour's margin, and is dropped: such an object is reported once, with the box and
    mask of the tile that saw it whole. NMS removes what the core rule cannot (larger
    objects detected whole by two tiles, a detector that boxes a piece loosely). This
    was chosen over merging partial masks (greedy union of pieces, SAHI's "GREEDYNMM") and
    mask-IoU NMS because the core rule never has to decide whether two pieces are one
    object: pieces of one object and two touching objects of one class look alike, and a
    union of pieces inherits the worst of each piece's mask at the cut. Its limit is
    objects larger than ``overlap * tile``: they may be reported as pieces, which is what
    ``full_image`` is for.

    **Full-image pass** (``full_image=True``): the whole image also runs once as the
    config resizes it (``Predictor.features_for_image``); its detections with a box side
    longer than a tile's core (``tile - round(overlap * tile)`` px) are kept and take
    precedence in the NMS over every tile detection (whatever the scores), so a large
    object that tiles cut into pieces is reported by the whole-image box; its smaller
    detections are dropped (the tiles see small objects at native resolution). Pieces
    whose IoU with the large box stays under ``nms_iou`` remain.

    **Memory.** Masks are kept as COCO RLE in source pixels (``placed_rle``); what is held
    at once is one tile batch's pasted masks (bool ``[n, tile, tile]`` per tile, ``n``
    detections per tile) and, with ``full_image``, bool ``[H, W]`` for each large
    full-image detection only. No full-size mask is made per tile detection.

    Args:
      predictor: wraps the model (a ``Detector``'s ``predictor``; its data config's
        ``size_divisibility`` pads the tiles, its mask threshold and paste method apply).
      categories: the model's classes (a ``Detector``'s ``categories``).
      tile: tile side in source pixels, ``> 0``; with a fixed ``data.image_size`` in the
        config it must fit in it.
      overlap: fraction of ``tile`` that neighbouring tiles share, in ``[0, 0.9]``.
      full_image: add the whole-image pass for objects larger than a tile's core.
      batch_size: tiles per model call.
      nms_iou: IoU at which the class-wise NMS across tiles suppresses, in ``(0, 1]``.

    Raises:
      ValueError: naming ``tile``, ``overlap``, ``batch_size`` or ``nms_iou`` when out of
        range.
    """

    def __init__(
        self,
        predictor: Predictor,
        categories: CategoryMap,
        tile: int,
        overlap: float = 0.2,
        full_image: bool = False,
        batch_size: int = 4,
        nms_iou: float = 0.5,
    ) -> None:
        self.check(tile, overlap)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must lie in (0, 1], got {nms_iou}")
        fixed = predictor.data_config.image_size
        if fixed is not None and tile > min(fixed):
            raise ValueError(f"tile {tile} does not fit the config's data.image_size {fixed}")
        self.predictor = predictor
        self.categories = categories
        self.batch_size = batch_size
        self.tile = int(tile)
        self.overlap = float(overlap)
        self.full_image = full_image
        self.nms_iou = float(nms_iou)

    @staticmethod
    def check(tile: int, overlap: float) -> None:
        """ValueError naming ``tile`` or ``overlap`` when out of range (what ``__init__``
        checks first, for callers that check before they have a predictor)."""
        if isinstance(tile, bool) or int(tile) != tile or tile <= 0:
            raise ValueError(f"tile must be a positive integer (pixels), got {tile!r}")
        if not 0.0 <= overlap <= MAX_OVERLAP:
            raise ValueError(f"tile overlap must lie in [0, {MAX_OVERLAP}], got {overlap}")

    @property
    def stride(self) -> int:
        """Pixels between the starts of neighbouring tiles (at least 1)."""
        return max(1, self.tile - int(round(self.overlap * self.tile)))

    def tiles(self, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The tiles of an ``height x width`` image, row by row.

        Returns:
          ``(window, core)`` per tile: ``window`` int ``(y1, x1, y2, x2)`` in source pixels;
          ``core`` float ``(y1, x1, y2, x2)``, half-open, ``-inf`` / ``inf`` on the image's
          borders (the cores partition the plane).
        """
        rows, cols = self._axis(height), self._axis(width)
        return [
            (np.array([y1, x1, y2, x2]), np.array([cy1, cx1, cy2, cx2]))
            for (y1, y2), (cy1, cy2) in rows
            for (x1, x2), (cx1, cx2) in cols
        ]

    def _axis(self, length: int) -> list[tuple[tuple[int, int], tuple[float, float]]]:
        """``((start, end), (core start, core end))`` of the tiles along one image side."""
        size = min(self.tile, length)
        starts = list(range(0, max(length - size, 0) + 1, self.stride))
        if starts[-1] + size < length:
            starts.append(length - size)
        bounds = [-np.inf]
        bounds += [(after + before + size) / 2 for before, after in zip(starts, starts[1:])]
        bounds.append(np.inf)
        return [((s, s + size), (bounds[i], bounds[i + 1])) for i, s in enumerate(starts)]

    def detect(
        self, image: np.ndarray, score_threshold: float = 0.5, source: str | None = None
    ) -> ImageDetections:
        """The merged detections of one image.

        Args:
          image: uint8 ``[H, W, 3]`` RGB.
          score_threshold: detections below it are dropped (before the merge).
          source: the file the image came from, carried into the result.

        Returns:
          ``ImageDetections`` in source pixels, best score first, masks as ``rles`` (COCO
          compressed RLE of the full image; ``masks`` is None), None for a box-only model.

        Raises:
          ValueError: a model without a box head, or a bad ``score_threshold``.
        """
        threshold = score_threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {threshold}")
        height, width = image.shape[:2]
        tiles = self.tiles(height, width)
        parts: list[dict[str, Any]] = []
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start : start + self.batch_size]
            crops = [image[y1:y2, x1:x2] for (y1, x1, y2, x2), _ in chunk]
            outputs = self._run(self._features(crops))
            for index, (window, core) in enumerate(chunk):
                found = self.predictor.image_detections(outputs, index)
                parts.append(self._tile_part(found, window, core, threshold, (height, width)))
        if self.full_image:
            parts.append(self._full_image_part(image, threshold))
        merged = _concatenate(parts)
        keep = _class_nms(
            merged["boxes"], merged["scores"], merged["classes"], merged["priority"], self.nms_iou
        )
        keep = keep[np.argsort(-merged["scores"][keep], kind="stable")]
        return self._result(image, source, merged, keep, threshold)

    def _run(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.predictor.predict_batch(features)
        if not DetectorMode.from_outputs(outputs).has_detections:
            raise ValueError(
                "tiled detection needs a model with a box head; this one gives proposals only"
            )
        return outputs

    def _features(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """A features batch of equal-size tiles at native resolution (no resizing),
        zero-padded as ``transforms.preprocess`` pads."""
        height, width = crops[0].shape[:2]
        config = self.predictor.data_config
        padded = np.asarray(transforms.padded_image_size(np.array([height, width]), config))
        images = np.zeros((len(crops), int(padded[0]), int(padded[1]), 3), np.float32)
        for index, crop in enumerate(crops):
            images[index, :height, :width] = crop
        size = np.tile(np.array([[height, width]], np.int32), (len(crops), 1))
        return {
            "images": images,
            "image_size": size,
            "original_size": size.copy(),
            "image_id": np.arange(len(crops), dtype=np.int64),
        }

    def _tile_part(
        self,
        found: dict[str, Any],
        window: np.ndarray,
        core: np.ndarray,
        threshold: float,
        image_size: tuple[int, int],
    ) -> dict[str, Any]:
        """One tile's detections above ``threshold`` whose box centre lies in ``core``,
        moved to source pixels, masks as RLE."""
        top, left = int(window[0]), int(window[1])
        boxes = found["boxes"] + np.array([top, left, top, left], np.float32)
        centre_y = (boxes[:, 0] + boxes[:, 2]) / 2
        centre_x = (boxes[:, 1] + boxes[:, 3]) / 2
        keep = (
            (found["scores"] >= threshold)
            & (centre_y >= core[0])
            & (centre_y < core[2])
            & (centre_x >= core[1])
            & (centre_x < core[3])
        )
        part: dict[str, Any] = {
            "boxes": boxes[keep],
            "scores": found["scores"][keep],
            "classes": found["classes"][keep],
            "priority": np.zeros(int(keep.sum()), bool),
        }
        if "masks" in found:
            part["rles"] = [placed_rle(m, top, left, *image_size) for m in found["masks"][keep]]
        if "keypoints" in found:
            points = found["keypoints"][keep].copy()
            points[..., 0] += left
            points[..., 1] += top
            part["keypoints"] = points
        return part

    def _full_image_part(self, image: np.ndarray, threshold: float) -> dict[str, Any]:
        """The whole-image pass's detections above ``threshold`` with a box side longer
        than ``stride``, with NMS priority; only those are pasted (at source size, one at a
        time into RLE)."""
        predictor = self.predictor
        outputs = self._run(predictor.features_for_image(image))
        height, width = image.shape[:2]
        count = int(outputs["num_detections"][0]) if "num_detections" in outputs else None
        scale = np.array([height, width] * 2) / np.tile(outputs["image_size"][0], 2)
        boxes = outputs["detection_boxes"][0, :count] * scale
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        rows = np.flatnonzero(
            (sides > self.stride) & (outputs["detection_scores"][0, :count] >= threshold)
        )
        selected = dict(outputs)
        for key, value in outputs.items():
            if key.startswith("detection_"):
                selected[key] = value[:, rows]
        selected["num_detections"] = np.array([len(rows)], np.int32)
        found = predictor.image_detections(selected, 0)
        part: dict[str, Any] = {
            "boxes": found["boxes"],
            "scores": found["scores"],
            "classes": found["classes"],
            "priority": np.ones(len(rows), bool),
        }
        if "masks" in found:
            part["rles"] = [placed_rle(m, 0, 0, height, width) for m in found["masks"]]
        if "keypoints" in found:
            part["keypoints"] = found["keypoints"]
        return part

    def _result(
        self,
        image: np.ndarray,
        source: str | None,
        merged: dict[str, Any],
        keep: np.ndarray,
        threshold: float,
    ) -> ImageDetections:
        return ImageDetections.from_classes(
            image,
            source,
            merged["boxes"][keep],
            merged["scores"][keep],
            merged["classes"][keep],
            self.categories,
            threshold,
            rles=[merged["rles"][i] for i in keep] if "rles" in merged else None,
            keypoints=merged["keypoints"][keep] if "keypoints" in merged else None,
        )


def _concatenate(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts' detections as one set (the keys of the first part)."""
    merged: dict[str, Any] = {}
    for key in parts[0]:
        if key == "rles":
            merged[key] = [rle for part in parts for rle in part[key]]
        else:
            merged[key] = np.concatenate([part[key] for part in parts])
    return merged


def _class_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, priority: np.ndarray, iou: float
) -> np.ndarray:
    """Greedy NMS per class: detections are visited priority first, then by score, and
    each suppresses the later ones of its class overlapping it at IoU ``>= iou``.

    Args:
      boxes: ``[n, 4]`` ``(y1, x1, y2, x2)``; scores ``[n]``; classes ``[n]``;
        priority ``[n]`` bool.

    Returns:
      int ``[k]``: the kept indices.
    """
    kept: list[int] = []
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        order = members[np.lexsort((-scores[members], ~priority[members]))]
        while order.size:
            best, order = order[0], order[1:]
            kept.append(int(best))
            overlap = box_iou(boxes[best], boxes[order])[0]
            order = order[overlap < iou]
    return np.array(kept, np.int64)
