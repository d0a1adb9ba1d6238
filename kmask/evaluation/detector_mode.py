"""Which stages a model's inference outputs come from, read off the outputs themselves."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class DetectorMode(enum.Enum):
    """The detector a model is, as its inference outputs show it.

    The evaluation, prediction and visualization code never reads the model configuration:
    it looks at the keys of ``model.predict_step`` (``from_outputs``) or of
    ``Predictor.image_detections`` (``from_detections``):

    ============== ============================ =========================== ===============
    mode           ``predict_step`` keys        ``image_detections`` keys   evaluated as
    ============== ============================ =========================== ===============
    ``MASK_RCNN``  ``detection_boxes`` and      ``boxes``, ``scores``,      ``bbox``,
                   ``detection_masks``          ``classes``, ``masks``      ``segm``
    ``FASTER_RCNN`` ``detection_boxes``, no     ``boxes``, ``scores``,      ``bbox``
                   ``detection_masks``          ``classes``
    ``RPN``        ``proposals`` only (no       ``proposals``,              proposal AR
                   ``detection_boxes``)         ``proposal_scores``
    ``SEGMENT_     ``proposal_masks`` (no       ``proposals``,              mask AR (segm
    PROPOSALS``    ``detection_boxes``)         ``proposal_scores``,        IoU)
                                                ``proposal_masks``
    ============== ============================ =========================== ===============

    Every mode may also carry the proposals (``proposals [B, P, 4]``,
    ``proposal_scores [B, P]``, ``num_proposals [B]``); where they are present the
    proposal recall is evaluated as well.
    """

    MASK_RCNN = "mask_rcnn"
    FASTER_RCNN = "faster_rcnn"
    RPN = "rpn"
    SEGMENT_PROPOSALS = "segment_proposals"

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any]) -> DetectorMode:
        """The mode of a ``model.predict_step`` (or ``Predictor.predict_batch``) result.

        Raises:
          ValueError: neither ``detection_boxes`` nor ``proposals`` among the keys.
        """
        return cls._from_keys(
            outputs, "detection_boxes", ("detection_masks",), "the model's outputs"
        )

    @classmethod
    def from_detections(cls, detections: Mapping[str, Any]) -> DetectorMode:
        """The mode of one image's ``Predictor.image_detections``.

        Raises:
          ValueError: neither ``boxes`` nor ``proposals`` among the keys.
        """
        return cls._from_keys(detections, "boxes", ("masks", "rles"), "image detections with keys")

    @classmethod
    def _from_keys(
        cls, values: Mapping[str, Any], boxes: str, masks: tuple[str, ...], what: str
    ) -> DetectorMode:
        if boxes in values:
            return cls.MASK_RCNN if any(key in values for key in masks) else cls.FASTER_RCNN
        if "proposal_masks" in values:
            return cls.SEGMENT_PROPOSALS
        if "proposals" in values:
            return cls.RPN
        raise ValueError(
            f"{what} {sorted(values)} hold neither detections ({boxes!r}) nor proposals "
            f"('proposals')"
        )

    @property
    def has_detections(self) -> bool:
        """Whether the model outputs classified detections (boxes, scores, classes)."""
        return self not in (DetectorMode.RPN, DetectorMode.SEGMENT_PROPOSALS)

    @property
    def has_masks(self) -> bool:
        """Whether the detections carry instance masks."""
        return self is DetectorMode.MASK_RCNN

    @property
    def iou_types(self) -> tuple[str, ...]:
        """The COCOeval ``iouType`` values that apply: ``("bbox", "segm")``, ``("bbox",)``
        or ``()`` (segment proposals are evaluated by their mask recall instead)."""
        return {
            "mask_rcnn": ("bbox", "segm"),
            "faster_rcnn": ("bbox",),
            "rpn": (),
            "segment_proposals": (),
        }[self.value]

    @property
    def description(self) -> str:
        """Human-readable name, e.g. ``"Faster R-CNN (boxes, no masks)"``."""
        return {
            "mask_rcnn": "Mask R-CNN (boxes and masks)",
            "faster_rcnn": "Faster R-CNN (boxes, no masks)",
            "rpn": "RPN only (proposals, no detections)",
            "segment_proposals": "segment proposals (class-agnostic masks, no detections)",
        }[self.value]
