"""The RoI stage: sampling in training, the box head, and the instance heads (masks, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.modeling.roi_heads.roi_sampler import ROISampler


@keras.saving.register_keras_serializable(package="kmask")
class ROIHeads(keras.layers.Layer):
    """Box head plus optional instance heads on RoIs of an FPN (Mask R-CNN section 3).

    Training (ground truth given): ``sampler`` (``ROISampler``) samples S RoIs per image,
    foreground first; the box head runs on all of them and returns its losses; each
    instance head runs on the first ``sampler.max_positives`` slots (which hold every
    sampled foreground RoI) and returns its losses. Inference: the box head runs on the
    proposals and its ``postprocess`` keeps the top detections; each instance head then runs
    on those boxes and adds its outputs (``detection_masks``, ...).

    With a ``shared_head`` (``Res5Head``, the ResNet-C4 models of Mask R-CNN figure 3, left)
    the RoIs are pooled once by it and every head runs, without a pooler of its own, on its
    output ``[B, R, S, S, C]`` instead of the pyramid; in training the instance heads take the
    foreground slots of the maps the box head ran on (as detectron2's ``Res5ROIHeads``), at
    inference the shared head runs again on the detected boxes.

    An instance head is a layer with ``loss_names``, ``compute_losses(features, rois
    [B, Q, 4], classes [B, Q] (0-based, -1 none), matched_index [B, Q], targets,
    training)`` -> ``{loss: scalar}`` and ``inference(features, detections)`` -> ``{output:
    tensor}``: the ``InstanceHead`` contract (``MaskHead``, ``KeypointHead``). Adding a head
    needs no change here.

    Args:
      box_head: ``BoxHead``.
      instance_heads: heads run on foreground RoIs / detections, e.g. ``[MaskHead]``; empty
        for Faster R-CNN.
      shared_head: ``None`` (FPN: each head pools for itself) or the layer that pools
        ``(features, boxes) -> [B, R, S, S, C]`` for all heads (``Res5Head``).
      batch_size_per_image, positive_fraction, fg_iou_threshold, add_gt_to_proposals: the
        ``ROISampler`` settings, fields of ``kmask.config.ROIHeadsConfig``.
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(features {"Pk": [B, Hk, Wk, C]}, proposals [B, P, 4] float32 (y1, x1, y2, x2)
    pixels, proposal_valid [B, P] bool, image_size [B, 2] int32 (h, w), targets=None,
    training=None)``. With ``targets`` (``gt_boxes [B, G, 4]``, ``gt_classes [B, G]`` int32
    0-based with -1 padding, ``seed [B]`` int64 when present (the RoI sampling is then a
    stateless function of each image's seed), and what the instance heads read, e.g.
    ``gt_masks``) it returns
    the losses ``{name: float32 scalar}`` of all heads; without, the detections:
    ``detection_boxes [B, N, 4]``, ``detection_scores [B, N]``, ``detection_classes [B, N]``
    int32 0-based, ``num_detections [B]`` int32, plus the instance heads' outputs.

    Reuse: the whole second stage on proposals of any origin. Example::

        >>> import keras, numpy as np
        >>> from kmask.modeling import BoxHead, MaskHead, ROIHeads
        >>> pyramid = {f"P{k}": keras.random.normal((1, 64 >> k, 64 >> k, 16)) for k in range(2, 6)}
        >>> proposals = np.array([[[0, 0, 32, 32], [8, 8, 60, 40]]], "float32")
        >>> heads = ROIHeads(
        ...     BoxHead(3, fc_dim=64, roi_align_implementation="tf", name="box_head"),
        ...     [MaskHead(3, conv_dim=16, num_conv=1, roi_align_implementation="tf")],
        ... )
        >>> detections = heads(pyramid, proposals, np.ones((1, 2), bool), np.array([[64, 64]]))
        >>> for key, value in sorted(detections.items()):
        ...     print(key, tuple(value.shape))
        detection_boxes (1, 100, 4)
        detection_classes (1, 100)
        detection_masks (1, 100, 28, 28)
        detection_scores (1, 100)
        num_detections (1,)
    """

    def __init__(
        self,
        box_head: keras.layers.Layer,
        instance_heads: Sequence[keras.layers.Layer] = (),
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_threshold: float = 0.5,
        add_gt_to_proposals: bool = True,
        shared_head: keras.layers.Layer | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)  # boxes stay float32; the heads cast themselves
        super().__init__(**kwargs)
        self.supports_jit = False  # NMS (and the RoIAlign custom op) cannot be XLA-compiled
        self.box_head = box_head
        self.instance_heads = list(instance_heads)
        self.shared_head = shared_head
        self.sampler = ROISampler(
            batch_size_per_image,
            positive_fraction,
            fg_iou_threshold,
            add_gt_to_proposals,
            name="sampler",
        )

    @property
    def loss_names(self) -> tuple[str, ...]:
        names = list(self.box_head.loss_names)
        for head in self.instance_heads:
            names.extend(head.loss_names)
        return tuple(names)

    def build(
        self,
        features_shape: dict[str, tuple[int | None, ...]],
        proposals_shape: tuple[int | None, ...] | None = None,
        proposal_valid_shape: tuple[int | None, ...] | None = None,
        image_size_shape: tuple[int | None, ...] | None = None,
        targets_shape: dict[str, tuple[int | None, ...]] | None = None,
    ) -> None:
        # Heads passed in already built keep their weights.
        head_shape = features_shape
        if self.shared_head is not None:
            if not self.shared_head.built:
                self.shared_head.build(features_shape, (None, None, 4))
            head_shape = self.shared_head.compute_output_shape(features_shape, (None, None, 4))
        for head in (self.box_head, *self.instance_heads):
            if not head.built:
                head.build(head_shape, (None, None, 4))

    def _head_features(
        self, features: dict[str, tf.Tensor], boxes: tf.Tensor, training: bool | None = None
    ) -> dict[str, tf.Tensor] | tf.Tensor:
        """What the heads run on for ``boxes``: the pyramid, or the shared head's maps."""
        if self.shared_head is None:
            return features
        return self.shared_head(features, boxes, training=training)

    def call(
        self,
        features: dict[str, tf.Tensor],
        proposals: tf.Tensor,
        proposal_valid: tf.Tensor,
        image_size: tf.Tensor,
        targets: dict[str, tf.Tensor] | None = None,
        training: bool | None = None,
    ) -> dict[str, tf.Tensor]:
        if targets is not None:
            return self._training_losses(features, proposals, proposal_valid, targets, training)
        class_logits, box_deltas = self.box_head(
            self._head_features(features, proposals), proposals
        )
        detections = self.box_head.postprocess(
            class_logits, box_deltas, proposals, proposal_valid, image_size
        )
        if self.instance_heads:
            head_features = self._head_features(features, detections["detection_boxes"])
            for head in self.instance_heads:
                detections.update(head.inference(head_features, detections))
        return detections

    def _training_losses(
        self,
        features: dict[str, tf.Tensor],
        proposals: tf.Tensor,
        proposal_valid: tf.Tensor,
        targets: dict[str, tf.Tensor],
        training: bool | None,
    ) -> dict[str, tf.Tensor]:
        gt_boxes = tf.cast(targets["gt_boxes"], tf.float32)
        sampled = self.sampler(
            proposals, proposal_valid, gt_boxes, targets["gt_classes"], seeds=targets.get("seed")
        )
        rois, class_targets = sampled["rois"], sampled["class_targets"]
        matched_index = sampled["matched_index"]
        head_features = self._head_features(features, rois, training)
        class_logits, box_deltas = self.box_head(head_features, rois, training=training)
        losses = self.box_head.compute_losses(
            class_logits,
            box_deltas,
            rois,
            class_targets,
            tf.gather(gt_boxes, matched_index, batch_dims=1),
        )
        # Foreground RoIs occupy the first slots (at most max_positives of them).
        count = self.sampler.max_positives
        classes = class_targets[:, :count] - 1  # 0-based; background and padding -> -1
        classes = tf.where(classes >= 0, classes, -1)
        if self.shared_head is not None:
            head_features = head_features[:, :count]
        for head in self.instance_heads:
            losses.update(
                head.compute_losses(
                    head_features,
                    rois[:, :count],
                    classes,
                    matched_index[:, :count],
                    targets,
                    training=training,
                )
            )
        return losses

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        sampler = self.sampler
        config.update(
            {
                "box_head": keras.saving.serialize_keras_object(self.box_head),
                "instance_heads": [
                    keras.saving.serialize_keras_object(head) for head in self.instance_heads
                ],
                "batch_size_per_image": sampler.batch_size_per_image,
                "positive_fraction": sampler.positive_fraction,
                "fg_iou_threshold": sampler.fg_iou_threshold,
                "add_gt_to_proposals": sampler.add_gt_to_proposals,
                "shared_head": None
                if self.shared_head is None
                else keras.saving.serialize_keras_object(self.shared_head),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ROIHeads:
        config = dict(config)
        config["box_head"] = keras.saving.deserialize_keras_object(config["box_head"])
        config["instance_heads"] = [
            keras.saving.deserialize_keras_object(head) for head in config["instance_heads"]
        ]
        if config.get("shared_head") is not None:
            config["shared_head"] = keras.saving.deserialize_keras_object(config["shared_head"])
        return cls(**config)
