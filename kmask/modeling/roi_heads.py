"""Box and mask branches on RoIs: sampling and targets in training, detections at test."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.layers.multi_level_roi_align import MultiLevelROIAlign
from kmask.layers.roi_sampler import ROISampler
from kmask.modeling.box_head import BoxHead
from kmask.modeling.mask_head import MaskHead
from kmask.modeling.postprocess import Postprocess
from kmask.ops.masks import mask_targets


@keras.saving.register_keras_serializable(package="kmask")
class ROIHeads(keras.layers.Layer):
    """Mask R-CNN RoI heads on FPN levels ``P{pooler_min_level}``..``P{pooler_max_level}``.

    RoIs are pooled by ``MultiLevelROIAlign`` sublayers (``aligned=True``) from the level of
    FPN eq. 1.

    Training (ground truth given): ``roi_sampler`` samples S RoIs per image (foreground
    first); the box branch runs on all of them (7x7 pooling); the mask branch runs on the
    first ``roi_sampler.max_positives`` slots (14x14 pooling), which hold every sampled
    foreground RoI, and its targets are the matched ground-truth masks RoIAligned to each
    RoI at the head's output size (``kmask.ops.masks.mask_targets``).

    Inference: the box branch runs on the proposals, ``postprocess`` keeps the top
    detections, and the mask branch runs on those boxes only; each detection gets the mask
    of its predicted class.

    Args:
      box_head: ``BoxHead``; mask_head: ``MaskHead``; roi_sampler: ``ROISampler``;
      postprocess: ``Postprocess`` (built layers or their serialized configs).
      box_pooler_resolution / mask_pooler_resolution: RoIAlign output sides (7 / 14).
      box_pooler_sampling_ratio / mask_pooler_sampling_ratio: samples per bin and axis
        (2 = the paper's four points; 0 = adaptive).
      pooler_min_level / pooler_max_level: pooled pyramid levels (2 / 5).
      roi_align_implementation: "auto" | "custom" | "tf" (see ``kmask.ops.roi_align``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(features {"Pk": [B, Hk, Wk, C]}, proposals [B, P, 4], proposal_valid [B, P],
    image_size [B, 2], gt_boxes=None, gt_classes=None, gt_masks=None)``.
    With ground truth it returns the training dict (S sampled RoIs, Q = max positives,
    m = mask output side, K classes):
      ``rois [B, S, 4]``, ``class_logits [B, S, K + 1]``, ``class_targets [B, S]`` (0 bg,
      k + 1 for class k, -1 padding), ``box_deltas [B, S, K, 4]``, ``box_targets [B, S, 4]``,
      ``mask_logits [B, Q, m, m, K]``, ``mask_targets [B, Q, m, m]`` in {0, 1},
      ``mask_classes [B, Q]`` int32 (0-based class of a foreground slot, -1 otherwise).
    Without, the detections of ``Postprocess`` plus ``detection_masks [B, N, m, m]``
    float32 probabilities in the box frame (zeros for padding).
    """

    def __init__(
        self,
        box_head: BoxHead | dict[str, Any],
        mask_head: MaskHead | dict[str, Any],
        roi_sampler: ROISampler | dict[str, Any],
        postprocess: Postprocess | dict[str, Any],
        box_pooler_resolution: int = 7,
        box_pooler_sampling_ratio: int = 2,
        mask_pooler_resolution: int = 14,
        mask_pooler_sampling_ratio: int = 2,
        pooler_min_level: int = 2,
        pooler_max_level: int = 5,
        roi_align_implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.supports_jit = False  # NMS (and the RoIAlign custom op) cannot be XLA-compiled

        def layer(value: Any) -> keras.layers.Layer:
            if isinstance(value, dict):
                return keras.saving.deserialize_keras_object(value)
            return value

        self.box_head = layer(box_head)
        self.mask_head = layer(mask_head)
        self.roi_sampler = layer(roi_sampler)
        self.postprocess = layer(postprocess)
        self.box_pooler_resolution = box_pooler_resolution
        self.box_pooler_sampling_ratio = box_pooler_sampling_ratio
        self.mask_pooler_resolution = mask_pooler_resolution
        self.mask_pooler_sampling_ratio = mask_pooler_sampling_ratio
        self.pooler_min_level = pooler_min_level
        self.pooler_max_level = pooler_max_level
        self.roi_align_implementation = roi_align_implementation
        levels = {"min_level": pooler_min_level, "max_level": pooler_max_level}
        self.box_pooler = MultiLevelROIAlign(
            box_pooler_resolution,
            box_pooler_sampling_ratio,
            aligned=True,
            implementation=roi_align_implementation,
            name="box_pooler",
            **levels,
        )
        self.mask_pooler = MultiLevelROIAlign(
            mask_pooler_resolution,
            mask_pooler_sampling_ratio,
            aligned=True,
            implementation=roi_align_implementation,
            name="mask_pooler",
            **levels,
        )

    def build(
        self, features_shape: dict[str, tuple[int | None, ...]], *args: Any, **kwargs: Any
    ) -> None:
        channels = features_shape[f"P{self.pooler_min_level}"][-1]
        box_side, mask_side = self.box_pooler_resolution, self.mask_pooler_resolution
        # Sublayers deserialized from a saved model arrive already built.
        if not self.box_head.built:
            self.box_head.build((None, None, box_side, box_side, channels))
        if not self.mask_head.built:
            self.mask_head.build((None, None, mask_side, mask_side, channels))

    def _mask_logits(self, features: dict[str, tf.Tensor], boxes: tf.Tensor) -> tf.Tensor:
        return self.mask_head(self.mask_pooler(features, boxes))

    def call(
        self,
        features: dict[str, tf.Tensor],
        proposals: tf.Tensor,
        proposal_valid: tf.Tensor,
        image_size: tf.Tensor,
        gt_boxes: tf.Tensor | None = None,
        gt_classes: tf.Tensor | None = None,
        gt_masks: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        if gt_boxes is not None:
            return self._training_outputs(
                features, proposals, proposal_valid, gt_boxes, gt_classes, gt_masks
            )
        class_logits, box_deltas = self.box_head(self.box_pooler(features, proposals))
        detections = self.postprocess(
            class_logits, box_deltas, proposals, proposal_valid, image_size
        )
        logits = self._mask_logits(features, detections["detection_boxes"])  # [B, N, m, m, K]
        logits = tf.transpose(logits, [0, 1, 4, 2, 3])
        chosen = tf.gather(logits, detections["detection_classes"], batch_dims=2)
        count = tf.shape(chosen)[1]
        valid = tf.range(count)[None, :] < detections["num_detections"][:, None]
        masks = tf.where(valid[:, :, None, None], tf.sigmoid(chosen), 0.0)
        return {**detections, "detection_masks": masks}

    def _training_outputs(
        self,
        features: dict[str, tf.Tensor],
        proposals: tf.Tensor,
        proposal_valid: tf.Tensor,
        gt_boxes: tf.Tensor,
        gt_classes: tf.Tensor,
        gt_masks: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        sampled = self.roi_sampler(proposals, proposal_valid, gt_boxes, gt_classes)
        rois = sampled["rois"]
        class_logits, box_deltas = self.box_head(self.box_pooler(features, rois))
        # Foreground RoIs occupy the first slots (at most max_positives of them).
        count = self.roi_sampler.max_positives
        mask_rois = rois[:, :count]
        mask_classes = sampled["class_targets"][:, :count] - 1  # -1 bg / padding -> <= -1
        mask_classes = tf.where(mask_classes >= 0, mask_classes, -1)
        mask_logits = self._mask_logits(features, mask_rois)
        targets = mask_targets(
            gt_masks,
            gt_boxes,
            mask_rois,
            sampled["matched_index"][:, :count],
            output_size=2 * self.mask_pooler_resolution,
            implementation=self.roi_align_implementation,
        )
        return {
            "rois": rois,
            "class_logits": class_logits,
            "class_targets": sampled["class_targets"],
            "box_deltas": box_deltas,
            "box_targets": sampled["box_targets"],
            "mask_logits": mask_logits,
            "mask_targets": targets,
            "mask_classes": mask_classes,
        }

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]], *args: Any, **kwargs: Any
    ) -> dict[str, tuple[int | None, ...]]:
        """Inference output shapes (the detections) from the pyramid's shapes."""
        batch = features_shape[f"P{self.pooler_min_level}"][0]
        side = 2 * self.mask_pooler_resolution
        count = self.postprocess.detections_per_image
        return {
            "detection_boxes": (batch, count, 4),
            "detection_scores": (batch, count),
            "detection_classes": (batch, count),
            "num_detections": (batch,),
            "detection_masks": (batch, count, side, side),
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "box_head": keras.saving.serialize_keras_object(self.box_head),
                "mask_head": keras.saving.serialize_keras_object(self.mask_head),
                "roi_sampler": keras.saving.serialize_keras_object(self.roi_sampler),
                "postprocess": keras.saving.serialize_keras_object(self.postprocess),
                "box_pooler_resolution": self.box_pooler_resolution,
                "box_pooler_sampling_ratio": self.box_pooler_sampling_ratio,
                "mask_pooler_resolution": self.mask_pooler_resolution,
                "mask_pooler_sampling_ratio": self.mask_pooler_sampling_ratio,
                "pooler_min_level": self.pooler_min_level,
                "pooler_max_level": self.pooler_max_level,
                "roi_align_implementation": self.roi_align_implementation,
            }
        )
        return config
