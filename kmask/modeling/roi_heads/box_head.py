"""Fast R-CNN box head of FPN: pooling, fc layers, class scores, per-class box deltas."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.modeling.roi_heads.instance_head import ClassRows
from kmask.modeling.roi_heads.pooled_head import PooledHead
from kmask.modeling.roi_heads.postprocess import Postprocess
from kmask.ops import boxes as box_ops
from kmask.ops.losses import fast_rcnn_losses


@keras.saving.register_keras_serializable(package="kmask")
class BoxHead(PooledHead):
    """Box branch: RoIAlign -> ``num_conv`` 3x3 convs -> ``num_fc`` fc ReLU -> predictors.

    ``pooler`` (``MultiLevelROIAlign``) pools each RoI from its FPN level; ``convs``
    (``ConvStack``, none in the papers' head, four with BN in torchvision's v2 head; both from
    ``PooledHead``) and
    ``fcs`` (``fc1``, ``fc2``) form the class-agnostic trunk; the class-dependent
    predictors are ``cls_score`` (K + 1 logits, column 0 background) and ``bbox_pred``
    ((dy, dx, dh, dw) per foreground class, or per class and background with
    ``predict_background``, torchvision's layout, whose background deltas are unused).
    Features are flattened in NHWC order (``pool="flatten"``, the FPN head) or averaged over
    the RoI's cells (``pool="average"``, the ResNet-C4 head of Mask R-CNN figure 3, which has
    no fc layers and runs without a pooler on ``Res5Head``'s maps, see ``PooledHead``).
    Initialization as the reference implementations:
    fc Caffe2 "XavierFill", cls_score normal(0.01), bbox_pred normal(0.001), zero biases.

    The head owns its loss (``losses``) and its inference (``postprocess``, a
    ``Postprocess``). Arguments other than ``num_classes``, ``pooler_levels`` and
    ``roi_align_implementation`` are the fields of ``kmask.config.BoxHeadConfig``.

    Args:
      num_classes: foreground classes K.
      pooler_levels: (min, max) FPN levels RoIs are pooled from (2, 5); ``None``: the
        features arrive pooled (``PooledHead``).
      roi_align_implementation: "auto" | "custom" | "tf" (``kmask.ops.roi_align``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(features {"Pk": [B, Hk, Wk, C]}, rois [B, R, 4] float32 (y1, x1, y2, x2)
    pixels)`` -> ``(class_logits [B, R, K + 1] float32, box_deltas [B, R, K, 4] float32)``.
    Without a pooler ``features`` is ``[B, R, S, S, C]``, the RoIs' pooled maps.

    Reuse: a box classifier on any pyramid and boxes; ``compute_losses`` and
    ``postprocess`` give its losses and detections. Fine-tuning to other classes keeps
    the trunk and re-initializes ``cls_score`` and ``bbox_pred`` only
    (``kmask.training.WeightTransfer``). Example::

        >>> import keras, numpy as np
        >>> from kmask.modeling import BoxHead
        >>> pyramid = {f"P{k}": keras.random.normal((1, 64 >> k, 64 >> k, 16)) for k in range(2, 6)}
        >>> boxes = np.array([[[0, 0, 32, 32], [8, 8, 60, 40]]], "float32")
        >>> head = BoxHead(num_classes=3, fc_dim=64, roi_align_implementation="tf")
        >>> logits, deltas = head(pyramid, boxes)
        >>> tuple(logits.shape), tuple(deltas.shape)
        ((1, 2, 4), (1, 2, 3, 4))
    """

    #: the config section ``model.box_head`` and the layer's name in ``ROIHeads``.
    section = "box_head"
    loss_names = ("loss_cls", "loss_box")
    #: the layers whose shapes follow the number of classes (``kmask.training.WeightTransfer``).
    class_dependent_layers = types.MappingProxyType(
        {"cls_score": ClassRows(1, True), "bbox_pred": ClassRows(4, False)}
    )

    def __init__(
        self,
        num_classes: int,
        pooler_resolution: int = 7,
        pooler_sampling_ratio: int = 2,
        pooler_aligned: bool = True,
        num_conv: int = 0,
        conv_dim: int = 256,
        norm: str = "none",
        num_fc: int = 2,
        fc_dim: int = 1024,
        pool: str = "flatten",
        predict_background: bool = False,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 1.0,
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = 0.0,
        pooler_levels: Sequence[int] | None = (2, 5),
        roi_align_implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        if pool not in ("flatten", "average"):
            raise ValueError(f"BoxHead pool must be 'flatten' or 'average', got {pool!r}")
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
        self.pool = pool
        self.predict_background = bool(predict_background)
        self.box_weights = tuple(float(w) for w in box_weights)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.cls_loss_weight = float(cls_loss_weight)
        self.box_loss_weight = float(box_loss_weight)
        dtype = self.dtype_policy
        self.fcs = [
            keras.layers.Dense(
                fc_dim,
                activation="relu",
                kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "uniform"),
                name=f"fc{i + 1}",
                dtype=dtype,
            )
            for i in range(num_fc)
        ]
        self.cls_score = keras.layers.Dense(
            num_classes + 1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="cls_score",
            dtype=dtype,
        )
        self.bbox_pred = keras.layers.Dense(
            4 * (num_classes + int(self.predict_background)),
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="bbox_pred",
            dtype=dtype,
        )
        self.postprocess = Postprocess(
            self.box_weights,
            score_threshold,
            nms_threshold,
            detections_per_image,
            min_box_size,
            name="postprocess",
        )

    def build(
        self,
        features_shape: dict[str, tuple[int | None, ...]],
        rois_shape: tuple[int | None, ...] | None = None,
    ) -> None:
        features = self.build_trunk(features_shape)
        if self.pool == "flatten":
            features *= self.pooler_resolution**2
        for fc in self.fcs:
            fc.build((None, features))
            features = fc.units
        self.cls_score.build((None, features))
        self.bbox_pred.build((None, features))

    def call(
        self, features: dict[str, tf.Tensor], rois: tf.Tensor, training: bool | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        x, batch, num = self.trunk(features, rois, training)
        if self.pool == "average":
            x = tf.reduce_mean(x, axis=(1, 2))
        else:
            x = tf.reshape(x, [batch * num, x.shape[1] * x.shape[2] * x.shape[3]])
        for fc in self.fcs:
            x = fc(x)
        logits = tf.cast(self.cls_score(x), tf.float32)
        deltas = tf.reshape(tf.cast(self.bbox_pred(x), tf.float32), [batch, num, -1, 4])
        if self.predict_background:
            deltas = deltas[:, :, 1:]
        return tf.reshape(logits, [batch, num, self.num_classes + 1]), deltas

    def compute_losses(
        self,
        class_logits: tf.Tensor,
        box_deltas: tf.Tensor,
        rois: tf.Tensor,
        class_targets: tf.Tensor,
        matched_boxes: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """The box branch's losses on sampled RoIs (float32 scalars).

        ``loss_cls`` and ``loss_box`` of ``kmask.ops.losses.fast_rcnn_losses``, with the
        targets encoded from ``matched_boxes`` by this head's ``box_weights``.

        Args:
          class_logits / box_deltas: this head's outputs on ``rois`` [B, S, ...].
          rois: [B, S, 4] sampled RoIs.
          class_targets: [B, S] int32: k + 1 for class k, 0 background, -1 padding.
          matched_boxes: [B, S, 4] the ground-truth box of each RoI (used where foreground).
        """
        targets = box_ops.encode(matched_boxes, rois, self.box_weights)
        targets = tf.stop_gradient(tf.where((class_targets > 0)[..., None], targets, 0.0))
        loss_cls, loss_box = fast_rcnn_losses(
            class_logits, box_deltas, class_targets, targets, self.smooth_l1_beta
        )
        return {
            "loss_cls": self.cls_loss_weight * loss_cls,
            "loss_box": self.box_loss_weight * loss_box,
        }

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]], rois_shape: tuple[int | None, ...]
    ) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
        batch, num = rois_shape[:2]
        return (batch, num, self.num_classes + 1), (batch, num, self.num_classes, 4)
