"""Prediction over image files: pictures of what the model sees, and its results as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kmask.data.category_map import CategoryMap
from kmask.data.image_io import DECODE_ERRORS, decode_rgb, encode_png, write_atomic
from kmask.evaluation.coco_results import to_coco_results, to_proposal_results
from kmask.evaluation.detector_mode import DetectorMode
from kmask.evaluation.predictor import Predictor
from kmask.evaluation.tiled_detection import TiledDetection
from kmask.visualization import draw_image_detections

# Image files a folder given to ``image_paths`` contributes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class PredictionWriter:
    """Runs a ``Predictor`` over image files and writes one picture per image plus a JSON
    file of the results, what ``kmask predict`` does.

    For each readable image, in the source image's pixels (``Predictor.image_detections``):

    - Mask R-CNN / Faster R-CNN: the detections scoring ``>= score_threshold`` are drawn
      (masks and keypoints with their skeleton when the model has them, boxes, class
      names, scores) into ``NAME.png`` and listed in ``detections.json`` as COCO results
      (``to_coco_results``: ``bbox [x, y, w, h]``, original ``category_id``, ``score``,
      RLE ``segmentation`` with masks, ``keypoints`` with keypoints) plus ``file_name``
      and ``category_name``;
    - RPN only: the ``num_proposals`` best proposals, whatever their objectness, are drawn
      and listed in ``proposals.json`` (``image_id``, ``bbox``, ``score``, ``file_name``);
    - segment proposals: the same with their masks drawn (the window boxes are listed).

    ``image_id`` is the image's 1-based position in ``paths``. Images that cannot be
    decoded are skipped (``skipped``; ``on_skip`` is told at once); an image without any
    detection still gets its picture. Outputs are written atomically; two inputs with the
    same stem get ``NAME.png`` and ``NAME_<position>.png``.

    After ``write``: ``mode`` (None when no image could be read), ``images_written``,
    ``skipped`` ``[(path, reason)]``, ``results`` (what the JSON holds) and
    ``results_path``.

    Args:
      predictor: wraps the model.
      categories: the model's classes (names and original ids).
      out_dir: output folder, created when missing.
      score_threshold: detections below it are neither drawn nor written.
      num_proposals: proposals drawn and written per image by an RPN-only model.
      on_skip: called with ``(path, reason)`` for each unreadable image.
      tiling: run each image through it (``TiledDetection``, the same ``predictor``)
        instead of whole; the picture decodes its RLE masks (bool ``[n, H, W]``).
    """

    def __init__(
        self,
        predictor: Predictor,
        categories: CategoryMap,
        out_dir: str | os.PathLike[str],
        score_threshold: float = 0.5,
        num_proposals: int = 20,
        on_skip: Callable[[Path, str], None] | None = None,
        tiling: TiledDetection | None = None,
    ) -> None:
        if num_proposals < 0:
            raise ValueError(f"num_proposals must be >= 0, got {num_proposals}")
        self.predictor = predictor
        self.categories = categories
        self.out_dir = Path(out_dir)
        self.score_threshold = score_threshold
        self.num_proposals = num_proposals
        self.on_skip = on_skip
        self.tiling = tiling
        self._clear()

    def _clear(self) -> None:
        self.mode: DetectorMode | None = None
        self.images_written = 0
        self.skipped: list[tuple[Path, str]] = []
        self.results: list[dict[str, Any]] = []
        self.results_path: Path | None = None

    @staticmethod
    def image_paths(
        inputs: Sequence[str | os.PathLike[str]], limit: int | None = None
    ) -> list[Path]:
        """Image files named directly, or found (sorted, by suffix ``IMAGE_SUFFIXES``) in
        named folders; the first ``limit`` of them (all when None or 0).

        Raises:
          FileNotFoundError: an input that is neither a file nor a folder.
        """
        paths: list[Path] = []
        for name in inputs:
            path = Path(name)
            if path.is_dir():
                paths.extend(
                    sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                )
            elif path.is_file():
                paths.append(path)
            else:
                raise FileNotFoundError(f"image not found: {path}")
        return paths[:limit] if limit else paths

    def select(self, detections: dict[str, Any]) -> dict[str, Any]:
        """What is drawn and written of one image's ``Predictor.image_detections``: the
        detections scoring ``>= score_threshold`` (proposals dropped), or for an RPN-only
        model the ``num_proposals`` best proposals."""
        if DetectorMode.from_detections(detections).has_detections:
            keep = np.asarray(detections["scores"]) >= self.score_threshold
            drop = ("proposals", "proposal_scores")
            return {
                key: value[keep] if isinstance(value, np.ndarray) else value
                for key, value in detections.items()
                if key not in drop
            }
        ranked = ("proposals", "proposal_scores", "proposal_masks")
        return {
            key: value[: self.num_proposals] if key in ranked else value
            for key, value in detections.items()
        }

    def predict_image(
        self, image: np.ndarray, image_id: int = 0
    ) -> tuple[dict[str, Any], np.ndarray]:
        """One image's selected predictions (``select``, source pixels) and its picture.

        Args:
          image: uint8 ``[H, W, 3]`` RGB.
          image_id: id carried into the predictions.

        Returns:
          ``(predictions, picture)``: the picture uint8 ``[H f, W f, 3]``, enlarged by an
          integer ``f`` when small (``kmask.visualization.draw_detections``).
        """
        if self.tiling is not None:
            result = self.tiling.detect(image, self.score_threshold)
            return result.as_predictor_dict(image_id, decode_rles=False), result.draw()
        features = self.predictor.features_for_image(image, image_id)
        outputs = self.predictor.predict_batch(features)
        selected = self.select(self.predictor.image_detections(outputs, 0))
        picture = draw_image_detections(
            image,
            selected,
            self.categories.category_names,
            self.score_threshold,
            self.num_proposals,
            self.categories.keypoint_skeleton,
        )
        return selected, picture

    def write(self, paths: Sequence[str | os.PathLike[str]], progress: bool = True) -> Path:
        """Predicts every image of ``paths`` and writes the pictures and the JSON file.

        Returns:
          the JSON file (``detections.json``, or ``proposals.json`` for an RPN-only model).

        Raises:
          OSError: the output folder or a file in it cannot be written.
        """
        self._clear()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for position, path in enumerate(
            tqdm([Path(p) for p in paths], desc="predict", unit="image", disable=not progress),
            start=1,
        ):
            try:
                image, _ = decode_rgb(path.read_bytes())
            except DECODE_ERRORS as error:
                reason = f"not a readable image ({error})"
                self.skipped.append((path, reason))
                if self.on_skip is not None:
                    self.on_skip(path, reason)
                continue
            selected, picture = self.predict_image(image, position)
            mode = DetectorMode.from_detections(selected)
            if self.mode is not None and mode is not self.mode:
                raise ValueError(
                    f"{path}: {mode.description} outputs after {self.mode.description} outputs"
                )
            self.mode = mode
            name = path.stem if path.stem not in used else f"{path.stem}_{position}"
            used.add(name)
            write_atomic(self.out_dir / f"{name}.png", encode_png(picture))
            self.images_written += 1
            self.results.extend(self._results(selected, path))
        proposals_only = self.mode is not None and not self.mode.has_detections
        name = "proposals.json" if proposals_only else "detections.json"
        self.results_path = self.out_dir / name
        write_atomic(self.results_path, (json.dumps(self.results) + "\n").encode())
        return self.results_path

    def _results(self, selected: dict[str, Any], path: Path) -> list[dict[str, Any]]:
        if not DetectorMode.from_detections(selected).has_detections:
            return [{**result, "file_name": str(path)} for result in to_proposal_results(selected)]
        names = dict(zip(self.categories.category_ids, self.categories.category_names))
        return [
            {**result, "file_name": str(path), "category_name": names[result["category_id"]]}
            for result in to_coco_results(selected, self.categories)
        ]

    def summary(self) -> str:
        """One line on what the last ``write`` wrote."""
        where = self.results_path.parent if self.results_path else self.out_dir
        name = self.results_path.name if self.results_path else "detections.json"
        if self.mode is not None and not self.mode.has_detections:
            what = f"{len(self.results)} proposals, the best {self.num_proposals} of each image"
        else:
            what = f"{len(self.results)} detections with score >= {self.score_threshold}"
        return f"wrote {self.images_written} PNGs and {name} ({what}) to {where}"
