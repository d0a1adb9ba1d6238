"""Mask R-CNN mask head for FPN: pooling, 4 conv3x3, deconv 2x2 stride 2, K mask logits."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.config import MaskHeadConfig
from kmask.layers.conv_stack import msra_fill
from kmask.modeling.roi_heads.instance_head import (
    ClassRows,
    HeadOutput,
    InstanceHead,
    OutputKind,
    WeightSource,
    conv_stack_sources,
    register_instance_head,
)
from kmask.modeling.roi_heads.pooled_head import PooledHead
from kmask.ops.losses import mask_loss
from kmask.ops.masks import mask_targets, select_class


@register_instance_head
@keras.saving.register_keras_serializable(package="kmask")
class MaskHead(PooledHead, InstanceHead):
    """Fully convolutional mask branch (Mask R-CNN figure 3, right).

    ``pooler`` (``MultiLevelROIAlign``, 14x14) -> ``convs`` (``ConvStack``: ``num_conv`` 3x3
    ReLU convs of ``conv_dim`` with ``norm``) -> ``deconv`` (2x2 stride-2 ReLU, doubling the
    side: ``output_size = 2 * pooler_resolution``) -> ``predictor`` (1x1 conv, one mask logit
    map per foreground class; per class and background with ``predict_background``,
    torchvision's layout, whose background map is unused). Initialization: MSRA fill for
    convs and deconv, normal(0.001) for the predictor, zero biases.

    An ``InstanceHead`` of ``ROIHeads`` (section ``model.mask_head``, on by default): it
    owns its targets (``gt_masks``) and loss (``compute_losses``) and its inference
    (``inference``: ``detection_masks``, box-frame probabilities). Arguments other than
    ``num_classes``, ``pooler_levels`` and ``roi_align_implementation`` are the fields of
    ``kmask.config.MaskHeadConfig`` (its ``pooler`` flattened).

    Args:
      num_classes: foreground classes K.
      pooler_levels: (min, max) FPN levels RoIs are pooled from (2, 5); ``None``: the
        features arrive pooled, ``[B, R, pooler_resolution, pooler_resolution, C]``
        (``PooledHead``; the ResNet-C4 mask branch of figure 3, left: ``num_conv=0`` on the
        res5 maps of ``Res5Head``).
      roi_align_implementation: "auto" | "custom" | "tf" (``kmask.ops.roi_align``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(features {"Pk": [B, Hk, Wk, C]}, boxes [B, R, 4] float32 (y1, x1, y2, x2)
    pixels)`` -> ``mask_logits [B, R, m, m, K]`` float32, ``m = output_size`` (a sigmoid
    gives probabilities in the box frame; only the class's own map is trained).

    Reuse: per-box masks on any pyramid; fine-tuning to other classes re-initializes
    ``predictor`` only (``kmask.training.WeightTransfer``). Example::

        >>> import keras, numpy as np
        >>> from kmask.modeling import MaskHead
        >>> pyramid = {f"P{k}": keras.random.normal((1, 64 >> k, 64 >> k, 16)) for k in range(2, 6)}
        >>> boxes = np.array([[[0, 0, 32, 32], [8, 8, 60, 40]]], "float32")
        >>> head = MaskHead(num_classes=3, conv_dim=16, num_conv=1, roi_align_implementation="tf")
        >>> tuple(head(pyramid, boxes).shape)
        (1, 2, 28, 28, 3)
    """

    section = "mask_head"
    config_class = MaskHeadConfig
    enabled_by_default = True
    target_keys = ("gt_masks",)
    outputs = (
        HeadOutput(
            "detection_masks", OutputKind.BOX_FRAME, "masks", pasted_key="detection_full_masks"
        ),
    )
    loss_names = ("loss_mask",)
    class_dependent_layers = types.MappingProxyType({"predictor": ClassRows(1, False)})

    def __init__(
        self,
        num_classes: int,
        pooler_resolution: int = 14,
        pooler_sampling_ratio: int = 2,
        pooler_aligned: bool = True,
        num_conv: int = 4,
        conv_dim: int = 256,
        norm: str = "none",
        predict_background: bool = False,
        loss_weight: float = 1.0,
        pooler_levels: Sequence[int] | None = (2, 5),
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
        self.num_classes = num_classes
        self.predict_background = bool(predict_background)
        self.loss_weight = float(loss_weight)
        self.output_size = 2 * pooler_resolution
        dtype = self.dtype_policy
        self.deconv = keras.layers.Conv2DTranspose(
            conv_dim,
            2,
            strides=2,
            activation="relu",
            kernel_initializer=msra_fill(),
            name="deconv",
            dtype=dtype,
        )
        self.predictor = keras.layers.Conv2D(
            num_classes + int(self.predict_background),
            1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="predictor",
            dtype=dtype,
        )

    def build(
        self,
        features_shape: dict[str, tuple[int | None, ...]],
        boxes_shape: tuple[int | None, ...] | None = None,
    ) -> None:
        channels = self.build_trunk(features_shape)
        self.deconv.build((None, None, None, channels))
        self.predictor.build((None, None, None, self.deconv.filters))

    def call(
        self, features: dict[str, tf.Tensor], boxes: tf.Tensor, training: bool | None = None
    ) -> tf.Tensor:
        x, batch, num = self.trunk(features, boxes, training)
        x = self.predictor(self.deconv(x))
        logits = tf.cast(x, tf.float32)
        if self.predict_background:
            logits = logits[..., 1:]
        side = self.output_size
        return tf.reshape(logits, [batch, num, side, side, self.num_classes])

    def compute_losses(
        self,
        features: dict[str, tf.Tensor],
        rois: tf.Tensor,
        classes: tf.Tensor,
        matched_index: tf.Tensor,
        targets: dict[str, tf.Tensor],
        training: bool | None = None,
    ) -> dict[str, tf.Tensor]:
        """``loss_mask`` on foreground RoIs: per-pixel sigmoid cross-entropy of the ground-truth
        class's map only (the paper's decoupling), mean over the pixels of foreground RoIs;
        zero without foreground.

        Args:
          features: the pyramid.
          rois: [B, Q, 4] RoIs (the sampled foreground slots).
          classes: [B, Q] int32 0-based class of each RoI, -1 for none.
          matched_index: [B, Q] int32 index of each RoI's ground truth.
          targets: the batch's ground truth; uses ``gt_masks [B, G, M, M]`` box-frame masks
            and ``gt_boxes [B, G, 4]`` (``kmask.ops.masks``).
        """
        logits = self(features, rois, training=training)  # [B, Q, m, m, K]
        gt = mask_targets(
            targets["gt_masks"],
            targets["gt_boxes"],
            rois,
            matched_index,
            output_size=self.output_size,
            implementation=self.roi_align_implementation,
        )
        return {"loss_mask": self.loss_weight * mask_loss(logits, gt, classes)}

    def inference(
        self, features: dict[str, tf.Tensor], detections: dict[str, tf.Tensor]
    ) -> dict[str, tf.Tensor]:
        """``{"detection_masks": [B, N, m, m]}`` float32 probabilities of each detection's
        class in its box frame (zeros for padding); ``kmask.ops.masks.paste_masks`` pastes
        them into the image."""
        logits = self(features, detections["detection_boxes"])
        chosen = select_class(logits, detections["detection_classes"])
        valid = tf.range(tf.shape(chosen)[1])[None, :] < detections["num_detections"][:, None]
        return {"detection_masks": tf.where(valid[:, :, None, None], tf.sigmoid(chosen), 0.0)}

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]], boxes_shape: tuple[int | None, ...]
    ) -> tuple[int | None, ...]:
        side = self.output_size
        return (*boxes_shape[:2], side, side, self.num_classes)

    def weight_sources(self, converter: str) -> list[WeightSource] | None:
        """torchvision's ``MaskRCNNHeads`` (``mask_head.<i>.0`` conv, ``.1`` norm) and
        ``MaskRCNNPredictor``; detectron2's ``MaskRCNNConvUpsampleHead``. The predictor
        keeps the channels of kmask's classes."""
        count = self.convs.num_conv
        if converter == "torchvision":
            head = "roi_heads.mask_head"
            convs = [(f"{head}.{i}.0", f"{head}.{i}.1") for i in range(count)]
            deconv = "roi_heads.mask_predictor.conv5_mask"
            predictor = "roi_heads.mask_predictor.mask_fcn_logits"
        elif converter == "detectron2":
            head = "roi_heads.mask_head"
            convs = [
                (f"{head}.mask_fcn{k}", f"{head}.mask_fcn{k}.norm") for k in range(1, count + 1)
            ]
            deconv, predictor = f"{head}.deconv", f"{head}.predictor"
        else:
            return None
        return [
            *conv_stack_sources(self.convs, convs),
            WeightSource(self.deconv, deconv),
            WeightSource(self.predictor, predictor, class_rows=True),
        ]
