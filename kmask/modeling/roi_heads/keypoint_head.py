"""Keypoint R-CNN head for FPN: pooling, 8 conv3x3 512, deconv 4x4 stride 2, 2x bilinear."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.config import KeypointHeadConfig, layer_arguments
from kmask.config.keypoint_head_config import HEATMAP_COORDINATES
from kmask.layers.conv_stack import msra_fill
from kmask.modeling.roi_heads.instance_head import (
    HeadContext,
    HeadOutput,
    InstanceHead,
    OutputKind,
    WeightSource,
    conv_stack_sources,
    register_instance_head,
)
from kmask.modeling.roi_heads.pooled_head import PooledHead
from kmask.ops.keypoints import heatmaps_to_keypoints, keypoint_targets
from kmask.ops.losses import keypoint_loss


@register_instance_head
@keras.saving.register_keras_serializable(package="kmask")
class KeypointHead(PooledHead, InstanceHead):
    """Human pose branch of Mask R-CNN (section 5): one heatmap per keypoint type.

    ``pooler`` (``MultiLevelROIAlign``, 14x14) -> ``convs`` (``ConvStack``: ``num_conv``
    3x3 ReLU convs of ``conv_dim``, 8 x 512 in the paper) -> ``deconv`` (4x4 stride-2
    transposed conv to ``num_keypoints`` maps, PyTorch ``padding=1``: side 2S) ->
    ``upsample`` (2x bilinear, half-pixel centres: side ``output_size = 4 *
    pooler_resolution``, 56). No activation after the deconv: the maps are logits of an
    ``m^2``-way softmax per keypoint. Initialization: MSRA fill (fan out) for convs and
    deconv, zero biases (detectron2, torchvision). Class-agnostic: every detection gets
    keypoints; a dataset's keypoints belong to the categories that define them.

    An ``InstanceHead`` of ``ROIHeads`` (section ``model.keypoint_head``, off by default):
    ``compute_losses`` builds one-hot targets from ``gt_keypoints``
    (``kmask.ops.keypoints.keypoint_targets``) and returns ``loss_keypoint``; ``inference``
    returns ``detection_keypoints`` (points). ``deconv`` is class-dependent (its outputs
    follow ``num_keypoints``). Arguments other than ``pooler_levels`` and
    ``roi_align_implementation`` are the fields of ``kmask.config.KeypointHeadConfig`` (its
    ``pooler`` flattened).

    Args:
      num_keypoints: K (17 for COCO persons; the length of the dataset's ``keypoints``).
      pooler_resolution, pooler_sampling_ratio, pooler_aligned: the RoIAlign.
      num_conv, conv_dim, norm: the conv trunk (``ConvStack``).
      normalize_by_visible_keypoints: divide the summed loss by the number of labelled
        keypoints in the batch (torchvision, detectron2's default); False divides by
        ``B * Q * K`` for Q foreground RoI slots per image (detectron2's alternative,
        ``images * positive_fraction * batch_size_per_image * K``).
      loss_weight: factor of ``loss_keypoint``.
      heatmap_coordinates: "continuous" (kmask, detectron2) or "pixel_index"
        (torchvision): the heatmaps are trained on, and decoded from, keypoints 0.5 px
        lower than ``gt_keypoints`` in "pixel_index" (``KeypointHeadConfig``); targets and
        detected keypoints stay continuous.
      pooler_levels: (min, max) FPN levels RoIs are pooled from (2, 5).
      roi_align_implementation: "auto" | "custom" | "tf" (``kmask.ops.roi_align``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(features {"Pk": [B, Hk, Wk, C]}, boxes [B, R, 4] float32 (y1, x1, y2, x2)
    pixels)`` -> ``heatmap_logits [B, R, m, m, K]`` float32, ``m = output_size``.

    Example::

        head = KeypointHead(17, roi_align_implementation="tf")
        logits = head({"P2": p2, "P3": p3, "P4": p4, "P5": p5}, boxes)  # [B, R, 56, 56, 17]
    """

    section = "keypoint_head"
    config_class = KeypointHeadConfig
    target_keys = ("gt_keypoints",)
    outputs = (HeadOutput("detection_keypoints", OutputKind.POINTS, "keypoints"),)
    loss_names = ("loss_keypoint",)
    class_dependent_layers = types.MappingProxyType({"deconv": None})

    def __init__(
        self,
        num_keypoints: int = 17,
        pooler_resolution: int = 14,
        pooler_sampling_ratio: int = 0,
        pooler_aligned: bool = True,
        num_conv: int = 8,
        conv_dim: int = 512,
        norm: str = "none",
        normalize_by_visible_keypoints: bool = True,
        loss_weight: float = 1.0,
        heatmap_coordinates: str = "continuous",
        pooler_levels: Sequence[int] = (2, 5),
        roi_align_implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            pooler_resolution,
            pooler_sampling_ratio,
            pooler_aligned,
            num_conv,
            conv_dim,
            norm,
            pooler_levels,
            roi_align_implementation,
            **kwargs,
        )
        if num_keypoints < 1:
            raise ValueError(f"{self.name}: num_keypoints must be >= 1, got {num_keypoints}")
        self.num_keypoints = num_keypoints
        self.normalize_by_visible_keypoints = bool(normalize_by_visible_keypoints)
        self.loss_weight = float(loss_weight)
        if heatmap_coordinates not in HEATMAP_COORDINATES:
            raise ValueError(
                f"{self.name}: heatmap_coordinates must be one of "
                f"{', '.join(HEATMAP_COORDINATES)}, got {heatmap_coordinates!r}"
            )
        self.heatmap_coordinates = heatmap_coordinates
        # (x, y, v) offset from continuous coordinates to the heatmaps' own; the point the
        # source scales keypoints about when it maps them to the original image.
        self.point_origin = HEATMAP_COORDINATES[heatmap_coordinates]
        self._offset = (self.point_origin,) * 2 + (0.0,)
        self.output_size = 4 * pooler_resolution
        dtype = self.dtype_policy
        self.deconv = keras.layers.Conv2DTranspose(
            num_keypoints,
            4,
            strides=2,
            padding="same",
            kernel_initializer=msra_fill(),
            name="deconv",
            dtype=dtype,
        )
        self.upsample = keras.layers.UpSampling2D(
            2, interpolation="bilinear", name="upsample", dtype=dtype
        )

    @classmethod
    def from_section(cls, section: KeypointHeadConfig, context: HeadContext) -> KeypointHead:
        """The head of ``section``: the default without ``num_classes`` (every detection
        gets keypoints)."""
        return cls(
            **layer_arguments(section),
            pooler_levels=context.pooler_levels,
            roi_align_implementation=context.roi_align_implementation,
            name=cls.section,
        )

    def build(
        self,
        features_shape: dict[str, tuple[int | None, ...]],
        boxes_shape: tuple[int | None, ...] | None = None,
    ) -> None:
        channels = self.build_trunk(features_shape)
        self.deconv.build((None, None, None, channels))

    def call(
        self, features: dict[str, tf.Tensor], boxes: tf.Tensor, training: bool | None = None
    ) -> tf.Tensor:
        x, batch, num = self.trunk(features, boxes, training)
        logits = tf.cast(self.upsample(self.deconv(x)), tf.float32)
        side = self.output_size
        return tf.reshape(logits, [batch, num, side, side, self.num_keypoints])

    def compute_losses(
        self,
        features: dict[str, tf.Tensor],
        rois: tf.Tensor,
        classes: tf.Tensor,
        matched_index: tf.Tensor,
        targets: dict[str, tf.Tensor],
        training: bool | None = None,
    ) -> dict[str, tf.Tensor]:
        """``loss_keypoint`` on foreground RoIs: softmax cross-entropy over the ``m^2``
        cells for each labelled keypoint (``v > 0``) of the matched ground truth that falls
        inside the RoI; normalized as ``normalize_by_visible_keypoints`` says; exactly zero
        without such keypoints.

        Args:
          features: the pyramid.
          rois: [B, Q, 4] RoIs (the sampled foreground slots).
          classes: [B, Q] int32 0-based class of each RoI, -1 for none.
          matched_index: [B, Q] int32 index of each RoI's ground truth.
          targets: the batch's ground truth; uses ``gt_keypoints [B, G, K, 3]`` ``(x, y,
            v)`` pixels (``kmask.data``).

        Raises:
          ValueError: ``targets`` without ``gt_keypoints`` (a dataset without keypoints).
        """
        if "gt_keypoints" not in targets:
            raise ValueError(
                f"{self.name} needs gt_keypoints in the targets: the dataset's categories "
                "define no keypoints (set model.keypoint_head: null, or use keypoint data)"
            )
        logits = self(features, rois, training=training)  # [B, Q, m, m, K]
        gt_keypoints = tf.cast(targets["gt_keypoints"], tf.float32) - self._offset
        indices, valid = keypoint_targets(gt_keypoints, rois, matched_index, self.output_size)
        valid &= (classes >= 0)[..., None]
        normalizer = None
        if not self.normalize_by_visible_keypoints:
            normalizer = tf.cast(tf.size(valid), tf.float32)  # B * Q * K
        loss = keypoint_loss(logits, indices, valid, normalizer)
        return {"loss_keypoint": self.loss_weight * loss}

    def inference(
        self, features: dict[str, tf.Tensor], detections: dict[str, tf.Tensor]
    ) -> dict[str, tf.Tensor]:
        """``{"detection_keypoints": [B, N, K, 3]}`` float32 ``(x, y, score)``: location in
        resized-image pixels (continuous, whatever ``heatmap_coordinates``) and
        probability of each keypoint of each detection
        (``kmask.ops.keypoints.heatmaps_to_keypoints``); zeros for padding."""
        boxes = detections["detection_boxes"]
        keypoints = heatmaps_to_keypoints(self(features, boxes), boxes) + self._offset
        valid = tf.range(tf.shape(boxes)[1])[None, :] < detections["num_detections"][:, None]
        return {"detection_keypoints": tf.where(valid[:, :, None, None], keypoints, 0.0)}

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]], boxes_shape: tuple[int | None, ...]
    ) -> tuple[int | None, ...]:
        side = self.output_size
        return (*boxes_shape[:2], side, side, self.num_keypoints)

    def weight_sources(self, converter: str) -> list[WeightSource] | None:
        """torchvision's ``KeypointRCNNHeads`` (a Sequential of (Conv2d, ReLU), no norm) and
        ``KeypointRCNNPredictor``; detectron2's ``KRCNNConvDeconvUpsampleHead``. The
        heatmap deconv (``ConvTranspose2d`` [in, K, 4, 4] with ``padding=1``) is
        ``Conv2DTranspose`` with "same" padding: both crop one row and column on each side
        of the 2S + 2 full output."""
        count = self.convs.num_conv
        if converter == "torchvision":
            convs = [(f"roi_heads.keypoint_head.{2 * i}", "") for i in range(count)]
            deconv = "roi_heads.keypoint_predictor.kps_score_lowres"
        elif converter == "detectron2":
            head = "roi_heads.keypoint_head"
            convs = [(f"{head}.conv_fcn{k}", "") for k in range(1, count + 1)]
            deconv = f"{head}.score_lowres"
        else:
            return None
        return [*conv_stack_sources(self.convs, convs), WeightSource(self.deconv, deconv)]
