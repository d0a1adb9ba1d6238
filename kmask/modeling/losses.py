"""Mask R-CNN training losses, computed only from the model's training outputs."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise smooth L1 (Fast R-CNN): ``0.5 x^2 / beta`` if ``|x| < beta`` else
    ``|x| - 0.5 beta``; ``beta = 0`` is plain L1."""
    absolute = tf.abs(diff)
    if beta <= 0.0:
        return absolute
    return tf.where(absolute < beta, 0.5 * tf.square(absolute) / beta, absolute - 0.5 * beta)


@keras.saving.register_keras_serializable(package="kmask")
class Losses(keras.layers.Layer):
    """The five Mask R-CNN losses (all float32 scalars).

    - ``loss_rpn_cls``: binary cross-entropy of the objectness logits over the sampled
      anchors (mean over sampled anchors).
    - ``loss_rpn_box``: smooth L1 of the RPN deltas of positive anchors, summed over the four
      coordinates and divided by the number of sampled anchors.
    - ``loss_cls``: softmax cross-entropy over K + 1 classes, mean over sampled RoIs.
    - ``loss_box``: smooth L1 of the ground-truth class's deltas of foreground RoIs, summed
      over coordinates and divided by the number of sampled RoIs.
    - ``loss_mask``: per-pixel sigmoid binary cross-entropy on the ground-truth class's mask
      only (Mask R-CNN's decoupling), mean over the pixels of foreground RoIs.

    Normalizers are clamped to >= 1; without positives the box and mask losses are exactly
    zero (an image without ground truth gives finite RPN losses and zero box / mask losses).

    Args:
      rpn_smooth_l1_beta / box_smooth_l1_beta: smooth-L1 transition points.
      rpn_cls_weight, rpn_box_weight, cls_weight, box_weight, mask_weight: loss multipliers.
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: the training dict of ``MaskRCNN`` (``rpn_logits [B, A]``, ``rpn_labels [B, A]``
    1/0/-1, ``rpn_deltas``/``rpn_box_targets [B, A, 4]``, ``class_logits [B, S, K + 1]``,
    ``class_targets [B, S]`` (-1 padding), ``box_deltas [B, S, K, 4]``,
    ``box_targets [B, S, 4]``, ``mask_logits [B, Q, m, m, K]``, ``mask_targets [B, Q, m, m]``,
    ``mask_classes [B, Q]`` (-1 = no mask)) -> ``{key: scalar}`` for ``LOSS_KEYS``.
    """

    def __init__(
        self,
        rpn_smooth_l1_beta: float = 1.0,
        box_smooth_l1_beta: float = 1.0,
        rpn_cls_weight: float = 1.0,
        rpn_box_weight: float = 1.0,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        mask_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.rpn_smooth_l1_beta = float(rpn_smooth_l1_beta)
        self.box_smooth_l1_beta = float(box_smooth_l1_beta)
        self.rpn_cls_weight = float(rpn_cls_weight)
        self.rpn_box_weight = float(rpn_box_weight)
        self.cls_weight = float(cls_weight)
        self.box_weight = float(box_weight)
        self.mask_weight = float(mask_weight)

    def call(self, outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        f32 = tf.float32
        # RPN.
        rpn_labels = tf.cast(outputs["rpn_labels"], tf.int32)
        rpn_sampled = rpn_labels >= 0
        rpn_count = tf.maximum(tf.reduce_sum(tf.cast(rpn_sampled, f32)), 1.0)
        rpn_bce = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(rpn_labels == 1, f32), logits=tf.cast(outputs["rpn_logits"], f32)
        )
        loss_rpn_cls = tf.reduce_sum(tf.where(rpn_sampled, rpn_bce, 0.0)) / rpn_count
        rpn_box = tf.reduce_sum(
            smooth_l1(
                tf.cast(outputs["rpn_deltas"], f32) - tf.cast(outputs["rpn_box_targets"], f32),
                self.rpn_smooth_l1_beta,
            ),
            axis=-1,
        )
        loss_rpn_box = tf.reduce_sum(tf.where(rpn_labels == 1, rpn_box, 0.0)) / rpn_count

        # Box branch.
        class_targets = tf.cast(outputs["class_targets"], tf.int32)
        roi_sampled = class_targets >= 0
        roi_count = tf.maximum(tf.reduce_sum(tf.cast(roi_sampled, f32)), 1.0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(class_targets, 0), logits=tf.cast(outputs["class_logits"], f32)
        )
        loss_cls = tf.reduce_sum(tf.where(roi_sampled, ce, 0.0)) / roi_count
        foreground = class_targets > 0
        deltas = tf.gather(
            tf.cast(outputs["box_deltas"], f32), tf.maximum(class_targets - 1, 0), batch_dims=2
        )  # [B, S, 4]
        box = tf.reduce_sum(
            smooth_l1(deltas - tf.cast(outputs["box_targets"], f32), self.box_smooth_l1_beta),
            axis=-1,
        )
        loss_box = tf.reduce_sum(tf.where(foreground, box, 0.0)) / roi_count

        # Mask branch: only the ground-truth class's channel of foreground RoIs.
        mask_classes = tf.cast(outputs["mask_classes"], tf.int32)
        has_mask = mask_classes >= 0
        logits = tf.transpose(tf.cast(outputs["mask_logits"], f32), [0, 1, 4, 2, 3])
        logits = tf.gather(logits, tf.maximum(mask_classes, 0), batch_dims=2)  # [B, Q, m, m]
        mask_bce = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(outputs["mask_targets"], f32), logits=logits
        )
        pixels = tf.cast(tf.shape(logits)[2] * tf.shape(logits)[3], f32)
        mask_count = tf.maximum(tf.reduce_sum(tf.cast(has_mask, f32)) * pixels, 1.0)
        loss_mask = tf.reduce_sum(tf.where(has_mask[:, :, None, None], mask_bce, 0.0)) / mask_count

        return {
            "loss_rpn_cls": self.rpn_cls_weight * loss_rpn_cls,
            "loss_rpn_box": self.rpn_box_weight * loss_rpn_box,
            "loss_cls": self.cls_weight * loss_cls,
            "loss_box": self.box_weight * loss_box,
            "loss_mask": self.mask_weight * loss_mask,
        }

    def compute_output_shape(self, input_shape: dict[str, Any]) -> dict[str, tuple[()]]:
        return {key: () for key in LOSS_KEYS}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "rpn_smooth_l1_beta": self.rpn_smooth_l1_beta,
                "box_smooth_l1_beta": self.box_smooth_l1_beta,
                "rpn_cls_weight": self.rpn_cls_weight,
                "rpn_box_weight": self.rpn_box_weight,
                "cls_weight": self.cls_weight,
                "box_weight": self.box_weight,
                "mask_weight": self.mask_weight,
            }
        )
        return config
