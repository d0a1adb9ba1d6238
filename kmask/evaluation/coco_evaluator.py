"""COCO evaluation of every detector mode: detections to COCO results, pycocotools COCOeval
(bbox, segm, keypoints), proposal recall."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from kmask.data.category_map import CategoryMap
from kmask.data.image_io import write_atomic
from kmask.errors import ConfigError, DataError
from kmask.evaluation.coco_results import (
    load_results,
    quiet,
    to_coco_results,
    to_proposal_results,
)
from kmask.evaluation.detector_mode import DetectorMode
from kmask.evaluation.predictor import Predictor
from kmask.evaluation.proposal_recall import ProposalRecall
from kmask.evaluation.segment_recall import segment_recall, to_segment_results

if TYPE_CHECKING:
    from kmask.data.coco_dataset import COCODataset

# COCOeval.stats entries 0..5 and the names they get in the flat metrics.
_AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCOeval.stats entries 0..4 of iouType "keypoints" (no small objects).
_KEYPOINT_AP_NAMES = ("AP", "AP50", "AP75", "APm", "APl")
IOU_TYPES = ("bbox", "segm", "keypoints")


def evaluation_batches(
    source: Any, data_config: Any, batch_size: int, max_images: int | None = None
) -> tuple[Any, int, int]:
    """The evaluation pipeline of a dataset (``COCODataset`` / ``ShardDataset``): its first
    ``max_images`` images (all when None) in batches of ``batch_size``.

    Returns:
      (batches, number of images, number of batches).
    """
    count = min(len(source), max_images) if max_images else len(source)
    total = math.ceil(count / batch_size)
    batches = source.build(data_config, training=False, batch_size=batch_size).take(total)
    return batches, count, total


# COCO's OKS sigmas of its 17 person keypoints (COCOeval's default kpt_oks_sigmas).
COCO_PERSON_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)  # fmt: skip


def oks_sigmas(
    categories: CategoryMap, configured: Sequence[float] | None = None
) -> tuple[float, ...] | None:
    """The OKS sigmas for ``categories``' keypoints: ``configured``
    (``eval.keypoint_oks_sigmas``, detectron2's ``TEST.KEYPOINT_OKS_SIGMAS``), else the
    categories' ``keypoint_sigmas``, else None for 17 keypoints (COCOeval's own,
    ``COCO_PERSON_SIGMAS``).

    Raises:
      ConfigError: ``configured`` not one per keypoint, or no sigmas for a number of
        keypoints other than 17 (the message says where to set them).
    """
    count = categories.num_keypoints
    if configured is not None:
        if len(configured) != count:
            raise ConfigError(
                f"eval.keypoint_oks_sigmas: {len(configured)} sigmas but {categories.source} "
                f"has {count} keypoints (one sigma per keypoint)"
            )
        return tuple(float(v) for v in configured)
    sigmas = categories.keypoint_sigmas
    if sigmas is None and count != len(COCO_PERSON_SIGMAS):
        raise ConfigError(
            f"{categories.source}: {count} keypoints and no OKS sigmas: set "
            f"eval.keypoint_oks_sigmas: [s1, ..., s{count}] in the config (detectron2's "
            "TEST.KEYPOINT_OKS_SIGMAS) or keypoint_sigmas in the dataset's categories"
        )
    return sigmas


class COCOEvaluator:
    """Collects predictions image by image and scores them with pycocotools.

    What is evaluated follows the model's outputs (``DetectorMode``, decided from the first
    image added; all images must agree):

    - Mask R-CNN: COCOeval ``bbox`` and ``segm``;
    - Faster R-CNN (no masks): COCOeval ``bbox`` only;
    - RPN only (no detections): the proposal recall alone;
    - segment proposals: the mask average recall through COCOeval segm IoU
      (``segment_recall``: ``segm_AR@100, segm_ARs@100, ..., segm_ARl@1000``), not the
      box recall of their windows;
    - in every mode the proposal recall too when the outputs carry proposals, and COCOeval
      ``keypoints`` (OKS) when the detections carry keypoints (Keypoint R-CNN), over the
      categories that define keypoints, with the OKS sigmas of ``oks_sigmas`` (the
      ``keypoint_sigmas`` argument, else the categories' ``keypoint_sigmas``, else COCO's
      person sigmas for 17 keypoints).

    Detections are written as COCO results in the ground truth's terms: original category
    ids (``categories.to_original_id``), boxes ``[x, y, w, h]`` and RLE masks in the pixels
    of the source images (boxes scaled by ``original_size / image_size``; masks pasted at
    the source size by ``kmask.ops.masks.paste_masks``). ``evaluate`` returns flat metrics
    ``bbox_AP, bbox_AP50, bbox_AP75, bbox_APs, bbox_APm, bbox_APl`` (and ``segm_*``), as
    fractions in [0, 1] (-1 where no ground truth falls in a size range), ``keypoints_AP,
    keypoints_AP50, keypoints_AP75, keypoints_APm, keypoints_APl``, plus the proposal
    recall ``AR@100, ARs@100, ARm@100, ARl@100, AR@1000, ...`` (``ProposalRecall``).
    ``evaluated`` names the groups that apply, ``summary`` prints them.

    Args:
      json_path: the COCO annotation file of the evaluated images.
      categories: the model's classes; default the JSON's own categories. Every model
        class must be a category of the JSON, except those marked ``"unused": true`` (a
        converted torchvision model's "N/A" slots, ``TORCHVISION_COCO_CATEGORIES``):
        their detections are written to the results and ignored by COCOeval, as in
        torchvision's own evaluation.
      proposal_limits: AR@k limits.
      keypoint_sigmas: OKS sigmas, one per keypoint (``eval.keypoint_oks_sigmas``); None:
        the categories' ``keypoint_sigmas`` or COCO's.

    Raises:
      DataError: missing or unreadable JSON, or model categories missing from it.
    """

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        categories: CategoryMap | None = None,
        proposal_limits: Sequence[int] = (100, 1000),
        keypoint_sigmas: Sequence[float] | None = None,
    ) -> None:
        self.json_path = Path(json_path)
        if not self.json_path.is_file():
            raise DataError(f"annotation file not found: {self.json_path}")
        try:
            self.coco = quiet(COCO, str(self.json_path))
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{self.json_path}: not a COCO annotation file: {error}") from None
        own = CategoryMap(self.coco.dataset.get("categories", []), source=str(self.json_path))
        for annotation in self.coco.dataset.get("annotations", []):
            # COCOeval's keypoint evaluation ignores ground truth without num_keypoints.
            if "keypoints" in annotation and "num_keypoints" not in annotation:
                visibility = np.asarray(annotation["keypoints"], np.float64)[2::3]
                annotation["num_keypoints"] = int(np.count_nonzero(visibility > 0))
        self.categories = categories if categories is not None else own
        used = {c["id"] for c in self.categories.categories if not c.get("unused")}
        missing = sorted(used - set(own.category_ids))
        if missing:
            raise DataError(
                f"{self.json_path}: the model's category ids {missing} are not in the file's "
                f"categories {list(own.category_ids)}"
            )
        self.proposal_limits = tuple(int(k) for k in proposal_limits)
        self.keypoint_sigmas = None if keypoint_sigmas is None else tuple(keypoint_sigmas)
        self.reset()

    def reset(self) -> None:
        """Forgets all collected predictions (and the mode)."""
        self.results: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.mode: DetectorMode | None = None
        self._recall = ProposalRecall(self.proposal_limits)
        self._has_proposals = False
        self._has_keypoints = False

    @property
    def evaluated(self) -> tuple[str, ...]:
        """What ``evaluate`` computes for the images added so far: ``"bbox"``, ``"segm"``,
        ``"keypoints"`` (COCOeval iou types) and ``"proposals"`` (proposal recall), in that
        order, or ``("segment_proposals",)`` (mask recall) for segment proposals."""
        if self.mode is None:
            return ()
        if self.mode is DetectorMode.SEGMENT_PROPOSALS:
            return ("segment_proposals",)
        keypoints = ("keypoints",) if self._has_keypoints else ()
        return self.mode.iou_types + keypoints + (("proposals",) if self._has_proposals else ())

    def add_image(self, detections: dict[str, Any]) -> None:
        """Adds one image's predictions (``Predictor.image_detections``, source pixels).

        Raises:
          DataError: an image id that is not in the annotation file.
          ValueError: predictions of another mode than the images before (e.g. masks
            missing after images with masks).
        """
        mode = DetectorMode.from_detections(detections)
        if self.mode is not None and mode is not self.mode:
            raise ValueError(
                f"image {detections['image_id']}: {mode.description} outputs after "
                f"{self.mode.description} outputs for the previous images"
            )
        image_id = detections["image_id"]
        if image_id not in self.coco.imgs:
            raise DataError(f"{self.json_path}: predicted image id {image_id} is not in the file")
        self.mode = mode
        self.image_ids.append(image_id)
        if mode.has_detections:
            self.results.extend(to_coco_results(detections, self.categories))
            self._has_keypoints |= "keypoints" in detections
        if mode is DetectorMode.SEGMENT_PROPOSALS:
            category_id = self.categories.to_original_id(0)
            limit = max(self.proposal_limits)
            self.results.extend(to_segment_results(detections, category_id, limit))
        elif "proposals" in detections:
            self._has_proposals = True
            if mode is DetectorMode.RPN:
                self.results.extend(to_proposal_results(detections, max(self.proposal_limits)))
            annotations = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], iscrowd=False))
            gt = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
            gt_boxes = np.stack([gt[:, 1], gt[:, 0], gt[:, 1] + gt[:, 3], gt[:, 0] + gt[:, 2]], 1)
            areas = np.array([a["area"] for a in annotations], np.float64)
            self._recall.update(detections["proposals"], gt_boxes, areas)

    def run(
        self,
        predictor: Predictor,
        batches: Iterable[Any],
        total: int | None = None,
        progress: bool = True,
    ) -> dict[str, float]:
        """Predicts every batch of ``(features, targets)`` (or features), collects the
        predictions and returns ``evaluate()``.

        Args:
          predictor: wraps the model.
          batches: e.g. ``build_dataset(config.data, training=False, ...)``.
          total: number of batches, for the progress bar.
          progress: show a tqdm progress bar.
        """
        self.reset()
        for batch in tqdm(
            batches, total=total, desc="evaluate", unit="batch", disable=not progress
        ):
            features = batch[0] if isinstance(batch, (tuple, list)) else batch
            for detections in predictor.batch_detections(predictor.predict_batch(features)):
                self.add_image(detections)
        return self.evaluate()

    def run_images(
        self,
        detect: Callable[[np.ndarray, int], dict[str, Any]],
        dataset: COCODataset,
        count: int,
        progress: bool = True,
    ) -> dict[str, float]:
        """Runs ``detect`` on each of the first ``count`` images of ``dataset`` (the
        annotation file's images, read from its folder at source size), collects the
        detections and returns ``evaluate()``; unreadable images are skipped with the
        dataset's warning, as in ``run``. For detection that works on whole source images,
        such as tiled detection::

            tiled = TiledDetection(predictor, evaluator.categories, tile=512)
            evaluator.run_images(
                lambda image, image_id: tiled.detect(image, 0.0).as_predictor_dict(
                    image_id, decode_rles=False
                ),
                dataset,
                len(dataset),
            )

        Args:
          detect: ``(uint8 [H, W, 3] RGB, image id) -> detections`` in
            ``Predictor.image_detections``' form (masks may be ``rles``).
          dataset: the ``COCODataset`` of this evaluator's annotation file.
          count: images to evaluate.
          progress: show a tqdm progress bar.
        """
        self.reset()
        for record in tqdm(
            dataset.records[:count], desc="evaluate", unit="image", disable=not progress
        ):
            read = dataset.read_image(record)
            if read is not None:
                self.add_image(detect(read[0], record.image_id))
        return self.evaluate()

    def evaluate(self) -> dict[str, float]:
        """The metrics that apply (``evaluated``) over the images added: COCOeval
        ``bbox_*`` / ``segm_*`` / ``keypoints_*`` and the proposal recall ``AR*@k``, all
        floats.

        Raises:
          ConfigError: keypoints to evaluate without OKS sigmas (``oks_sigmas``).
        """
        if not self.image_ids:
            raise ValueError("no image was evaluated")
        metrics: dict[str, float] = {}
        if self.mode is DetectorMode.SEGMENT_PROPOSALS:
            metrics.update(
                segment_recall(self.coco, self.results, self.image_ids, self.proposal_limits)
            )
        for iou_type in self.mode.iou_types:
            metrics.update(self.coco_metrics(self.coco, self.results, iou_type, self.image_ids))
        if self._has_keypoints:
            sigmas = oks_sigmas(self.categories, self.keypoint_sigmas)
            metrics.update(
                self.coco_metrics(
                    self.coco,
                    self.results,
                    "keypoints",
                    self.image_ids,
                    keypoint_sigmas=sigmas,
                    category_ids=[
                        self.categories.to_original_id(k) for k in self.categories.keypoint_classes
                    ],
                )
            )
        if self._has_proposals:
            metrics.update(self._recall.result())
        return metrics

    def metrics_record(self, metrics: dict[str, float]) -> dict[str, Any]:
        """``metrics`` with what they describe, for a metrics JSON file: ``mode``
        (``"mask_rcnn"``, ``"faster_rcnn"`` or ``"rpn"``), ``evaluated`` (the list of
        ``evaluated``) and ``num_images``."""
        return {
            "mode": self.mode.value if self.mode is not None else None,
            "evaluated": list(self.evaluated),
            **metrics,
            "num_images": len(self.image_ids),
        }

    def summary(self, metrics: dict[str, float]) -> str:
        """The console report of ``metrics``: which metrics apply to this model, the
        table of ``format_metrics``, and a last line with the main figure (mask and box AP,
        box AP, or the proposal AR at the largest limit)."""
        count = len(self.image_ids)
        lines = [_applies_line(self.mode, self.evaluated), format_metrics(metrics)]
        if "keypoints_AP" in metrics:
            lines.append(f"keypoint AP {metrics['keypoints_AP']:.3f}  (COCO OKS AP@[.5:.95])")
        if "segm_AP" in metrics:
            lines.append(
                f"mask AP {metrics['segm_AP']:.3f}  box AP {metrics['bbox_AP']:.3f}  "
                f"(COCO AP@[.5:.95], {count} images)"
            )
        elif "bbox_AP" in metrics:
            lines.append(f"box AP {metrics['bbox_AP']:.3f}  (COCO AP@[.5:.95], {count} images)")
        elif f"segm_AR@{max(self.proposal_limits)}" in metrics:
            limit = max(self.proposal_limits)
            values = "  ".join(
                f"{name} " + ("-" if metrics[key] < 0 else f"{metrics[key]:.3f}")
                for name, key in [
                    (f"mask AR@{limit}", f"segm_AR@{limit}"),
                    ("AR_s", f"segm_ARs@{limit}"),
                    ("AR_m", f"segm_ARm@{limit}"),
                    ("AR_l", f"segm_ARl@{limit}"),
                ]
            )
            lines.append(f"{values}  (segm IoU [.5:.95], {count} images)")
        else:
            key = f"AR@{max(self.proposal_limits)}"
            if key in metrics:
                lines.append(
                    f"proposal {key} {metrics[key]:.3f}  (recall averaged over IoU "
                    f"[.5:.95], {count} images)"
                )
        return "\n".join(line for line in lines if line)

    @staticmethod
    def coco_metrics(
        coco: COCO,
        results: list[dict[str, Any]],
        iou_type: str,
        image_ids: Sequence[int] | None = None,
        keypoint_sigmas: Sequence[float] | None = None,
        category_ids: Sequence[int] | None = None,
    ) -> dict[str, float]:
        """pycocotools COCOeval of COCO-format ``results`` against ``coco``.

        Args:
          coco: the ground truth.
          results: COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``,
            ``segmentation`` for ``segm``, ``keypoints`` for ``keypoints``); may be empty
            (no detection at all).
          iou_type: ``"bbox"``, ``"segm"`` or ``"keypoints"``.
          image_ids: evaluate these images only (default: every image of ``coco``).
          keypoint_sigmas: OKS sigmas (default COCOeval's, COCO's 17 person keypoints).
          category_ids: evaluate these categories only (default: all; for keypoints the
            categories that define them).

        Returns:
          ``{iou_type}_AP``, ``_AP50``, ``_AP75``, ``_APs``, ``_APm``, ``_APl``: COCOeval's
          ``stats[0:6]`` (``keypoints``: no ``_APs``); without results 0 where ground truth
          exists, -1 elsewhere.
        """
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
        if iou_type == "keypoints":
            results = [r for r in results if "keypoints" in r]
        detections = load_results(coco, results, iou_type)
        evaluator = COCOeval(coco, detections, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in image_ids})
        if category_ids is not None:
            evaluator.params.catIds = sorted(int(i) for i in category_ids)
        if keypoint_sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(keypoint_sigmas, np.float64)
        quiet(evaluator.evaluate)
        quiet(evaluator.accumulate)
        quiet(evaluator.summarize)
        names = _KEYPOINT_AP_NAMES if iou_type == "keypoints" else _AP_NAMES
        return {
            f"{iou_type}_{name}": float(value)
            for name, value in zip(names, evaluator.stats[: len(names)])
        }

    def write_results(self, path: str | os.PathLike[str]) -> None:
        """Writes the collected results as a JSON file, atomically: COCO results
        (``to_coco_results``) for detections, class-agnostic proposals
        (``to_proposal_results``, the best ``max(proposal_limits)`` per image) for an
        RPN-only model."""
        write_atomic(path, json.dumps(self.results).encode("utf-8"))


_GROUP_NAMES = {
    "bbox": "box AP (bbox)",
    "segm": "mask AP (segm)",
    "keypoints": "keypoint AP (OKS)",
    "proposals": "proposal recall (AR)",
    "segment_proposals": "mask recall (AR, segm IoU)",
}


def _applies_line(mode: DetectorMode | None, evaluated: Sequence[str]) -> str:
    if mode is None:
        return ""
    line = f"{mode.description}: " + ", ".join(_GROUP_NAMES[g] for g in evaluated)
    if mode is DetectorMode.FASTER_RCNN:
        line += "; no masks, so no segm metrics"
    elif mode is DetectorMode.RPN:
        line += "; no detections, so no bbox/segm metrics"
    elif mode is DetectorMode.SEGMENT_PROPOSALS:
        line += "; no detections, so no bbox/segm AP"
    return line


def format_metrics(metrics: dict[str, float]) -> str:
    """A small table of the metrics present (fractions with 3 decimals, as the summary
    line, ``metrics.json`` and pycocotools print them): a ``bbox``
    row, a ``segm`` row, a ``kpts`` row, an ``rpn`` row of proposal recall and a ``mask``
    row of segment proposals' mask recall, each only when its keys are in ``metrics``."""
    lines = []
    for prefix in IOU_TYPES:
        names = [n for n in _AP_NAMES if f"{prefix}_{n}" in metrics]
        if names:
            values = "  ".join(f"{n} {_fraction(metrics[f'{prefix}_{n}'])}" for n in names)
            label = "kpts" if prefix == "keypoints" else prefix
            lines.append(f"{label:5s} {values}")
    recall = [k for k in metrics if k.startswith("AR")]
    if recall:
        lines.append("rpn   " + "  ".join(f"{k} {_fraction(metrics[k])}" for k in recall))
    mask_recall = [k for k in metrics if k.startswith("segm_AR")]
    if mask_recall:
        lines.append(
            "mask  "
            + "  ".join(f"{k.removeprefix('segm_')} {_fraction(metrics[k])}" for k in mask_recall)
        )
    return "\n".join(lines)


def _fraction(value: float) -> str:
    return "  -  " if value < 0 or math.isnan(value) else f"{value:.3f}"
