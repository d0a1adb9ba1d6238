"""``Detector``: a trained or converted model behind one call, ``detect(images)``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from kmask.data.category_map import CategoryMap
from kmask.data.image_io import DECODE_ERRORS, decode_rgb
from kmask.evaluation.detector_mode import DetectorMode
from kmask.evaluation.image_detections import ImageDetections
from kmask.evaluation.predictor import Predictor
from kmask.evaluation.tiled_detection import TiledDetection
from kmask.runs.inference_source import InferenceSource

# One image as ``detect`` takes it.
ImageInput = str | os.PathLike | bytes | np.ndarray | Image.Image
MASK_FORMATS = ("bitmap", "rle")


class Detector:
    """Detections for images of any size from a run directory, in one call.

    Example::

        import kmask

        detector = kmask.load_model("runs/shapes_tiny")  # or a convert-weights run
        result = detector.detect("photo.jpg")  # one image -> one ImageDetections
        for box, name, score in zip(result.boxes, result.class_names, result.scores):
            print(name, score, box)  # box (y1, x1, y2, x2) in photo.jpg's pixels
        picture = result.draw()  # uint8 RGB with masks, boxes, names and scores
        results = detector.detect(["a.jpg", b"<png bytes>", rgb_array])  # a list

    Each image is resized as evaluation resizes it, runs at its own padded size (what it
    gets alone, whatever its batch mates: ``Predictor.predict_batch``) and its detections
    are mapped back to its source pixels: ``detect`` gives what ``kmask predict`` writes
    and what ``kmask evaluate`` scores. Images are run ``batch_size`` at a time.

    Args:
      predictor: wraps the model (``Predictor``; its ``data_config``, mask threshold and
        paste method apply).
      categories: the model's classes.
      score_threshold: detections scoring below it are dropped.
      batch_size: images per model call.
    """

    def __init__(
        self,
        predictor: Predictor,
        categories: CategoryMap,
        score_threshold: float = 0.5,
        batch_size: int = 4,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {score_threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.predictor = predictor
        self.categories = categories
        self.score_threshold = score_threshold
        self.batch_size = batch_size

    @classmethod
    def from_source(
        cls, source: InferenceSource, batch_size: int = 4, precision: str = "float32"
    ) -> Detector:
        """The detector of a run directory or checkpoint (``InferenceSource``): its model
        computing in ``precision`` (``InferencePrecision``: float32, bfloat16, float16 or
        auto), its ``categories.json`` (placeholder names ``class_1``... without one)
        and the config's ``eval.visualization_score_threshold``, ``eval.mask_threshold``
        and ``eval.mask_paste``, as ``kmask predict`` uses them.

        Raises:
          FileNotFoundError, ValueError: as ``InferenceSource.load_model``.
          DataError: a ``categories.json`` that does not fit the model.
        """
        config = source.config
        categories = source.categories() or CategoryMap.placeholder(config.model.num_classes)
        predictor = Predictor(
            source.load_model(precision),
            config.data,
            config.eval.mask_threshold,
            config.eval.mask_paste,
        )
        return cls(predictor, categories, config.eval.visualization_score_threshold, batch_size)

    @property
    def model(self) -> Any:
        """The Keras model (``MaskRCNN``), for ``summary()``, fine-tuning or export."""
        return self.predictor.model

    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        score_threshold: float | None = None,
        mask_format: str | None = None,
        tile: int | None = None,
        tile_overlap: float = 0.2,
        tile_with_full_image: bool = False,
    ) -> ImageDetections | list[ImageDetections]:
        """Detects objects in one image or many.

        Args:
          images: one image or a list of them, each a file path, the bytes of an encoded
            image (JPEG, PNG, BMP, GIF, WebP: what Pillow reads), a uint8 ``[H, W, 3]`` RGB
            (or ``[H, W]`` gray) array, or a PIL image; a uint8 ``[N, H, W, 3]`` array is
            ``N`` images. Sizes may differ.
          score_threshold: replaces the detector's ``score_threshold`` for this call.
          mask_format: ``"bitmap"`` for bool ``[n, H, W]`` masks (``ImageDetections.masks``)
            or ``"rle"`` for COCO compressed RLEs (``ImageDetections.rles``), smaller for
            large images; None = ``"bitmap"``, or ``"rle"`` with ``tile`` (the only format
            of tiled detection).
          tile: run each image as overlapping ``tile`` px tiles at native resolution and
            merge their detections (``TiledDetection``), for images far larger than the
            training size; None = the whole image, resized as the config says.
          tile_overlap: fraction of ``tile`` that neighbouring tiles share, in [0, 0.9].
          tile_with_full_image: with ``tile``, add a whole-image pass for objects larger
            than a tile's core (``TiledDetection``'s ``full_image``).

        Returns:
          one ``ImageDetections`` for one image, a list in input order for a list or an
          ``[N, H, W, 3]`` array.

        Raises:
          ValueError: an image that cannot be read (naming its position and file), a bad
            argument, or a model without a box head (RPN only or segment proposals:
            ``Predictor`` gives their proposals).
          FileNotFoundError: a path that names no file.
        """
        threshold = self.score_threshold if score_threshold is None else score_threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {threshold}")
        if mask_format is None:
            mask_format = "bitmap" if tile is None else "rle"
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        tiled = None
        if tile is not None:
            if mask_format != "rle":
                raise ValueError('tiled detection gives masks as RLE only (mask_format="rle")')
            tiled = TiledDetection(
                self.predictor,
                self.categories,
                tile,
                tile_overlap,
                tile_with_full_image,
                self.batch_size,
            )
        single = _is_single(images)
        items = [images] if single else list(images)
        decoded = [_read(item, position) for position, item in enumerate(items)]
        if tiled is not None:
            merged = [tiled.detect(rgb, threshold, source) for rgb, source in decoded]
            return merged[0] if single else merged
        results: list[ImageDetections] = []
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start : start + self.batch_size]
            outputs = self.predictor.predict_batch(self._features([rgb for rgb, _ in chunk]))
            if not DetectorMode.from_outputs(outputs).has_detections:
                raise ValueError(
                    "detect() needs a model with a box head; this one gives proposals only "
                    "(use kmask.evaluation.Predictor for them)"
                )
            for index, (rgb, source) in enumerate(chunk):
                detections = self.predictor.image_detections(outputs, index)
                results.append(self._result(rgb, source, detections, threshold, mask_format))
        return results[0] if single else results

    def _features(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The features batch of ``images``: each as ``Predictor.features_for_image``
        makes it, zero-padded to the largest (``predict_batch`` crops each image back to
        its own padded size)."""
        singles = [self.predictor.features_for_image(rgb) for rgb in images]
        height = max(int(f["images"].shape[1]) for f in singles)
        width = max(int(f["images"].shape[2]) for f in singles)
        batch: dict[str, np.ndarray] = {}
        for key in singles[0]:
            values = [np.asarray(f[key]) for f in singles]
            if key == "images":
                values = [
                    np.pad(v, ((0, 0), (0, height - v.shape[1]), (0, width - v.shape[2]), (0, 0)))
                    for v in values
                ]
            batch[key] = np.concatenate(values)
        return batch

    def _result(
        self,
        rgb: np.ndarray,
        source: str | None,
        detections: dict[str, Any],
        threshold: float,
        mask_format: str,
    ) -> ImageDetections:
        keep = detections["scores"] >= threshold
        masks = detections["masks"][keep] if "masks" in detections else None
        rles = None
        if masks is not None and mask_format == "rle":
            encoded = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0))))
            rles = [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in encoded]
            masks = None
        return ImageDetections.from_classes(
            rgb,
            source,
            detections["boxes"][keep],
            detections["scores"][keep],
            detections["classes"][keep],
            self.categories,
            threshold,
            masks=masks,
            rles=rles,
            keypoints=detections["keypoints"][keep] if "keypoints" in detections else None,
        )

    def __getattr__(self, name: str) -> Any:
        """kmask 0.1's ``load_model`` returned the Keras model: its attributes still
        resolve on the model, with a ``DeprecationWarning`` naming ``Detector.model``."""
        if name.startswith("__") or name == "predictor":
            raise AttributeError(name)
        model = self.predictor.model
        if not hasattr(model, name):
            raise AttributeError(f"'Detector' object has no attribute {name!r}")
        warnings.warn(
            f"kmask.load_model returns a Detector since kmask 0.2; use .model.{name} for the "
            "Keras model's attribute",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(model, name)


def _is_single(images: Any) -> bool:
    """Whether ``images`` is one image (not a list, tuple or ``[N, H, W, 3]`` array)."""
    if isinstance(images, np.ndarray):
        return images.ndim != 4
    return not isinstance(images, (list, tuple))


def _read(item: Any, position: int) -> tuple[np.ndarray, str | None]:
    """``(rgb uint8 [H, W, 3], source file or None)`` of one ``detect`` input."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image {position}: {path}: no such file")
        try:
            return decode_rgb(path.read_bytes())[0], str(path)
        except DECODE_ERRORS as error:
            raise ValueError(f"image {position}: {path}: not a readable image ({error})") from None
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return decode_rgb(bytes(item))[0], None
        except DECODE_ERRORS as error:
            raise ValueError(
                f"image {position}: bytes are not a readable image ({error})"
            ) from None
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"), np.uint8), None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (
            item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 3)
        ):
            raise ValueError(
                f"image {position}: an array must be uint8 [H, W, 3] RGB or [H, W] gray, got "
                f"{item.dtype} {list(item.shape)}"
            )
        rgb = np.repeat(item[:, :, None], 3, axis=2) if item.ndim == 2 else item
        return np.ascontiguousarray(rgb), None
    raise ValueError(
        f"image {position}: expected a path, bytes, a uint8 array or a PIL image, got "
        f"{type(item).__name__}"
    )
