"""Box-branch inference: class-specific decoding, per-class NMS, top detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.ops import boxes as box_ops
from kmask.ops.nms import batched_multiclass_nms


@keras.saving.register_keras_serializable(package="kmask")
class Postprocess(keras.layers.Layer):
    """Turns box-head outputs on the proposals into detections (Mask R-CNN inference).

    Softmax over K + 1 classes; each proposal is decoded with each foreground class's own
    deltas and clipped to the valid image; candidates scoring ``> score_threshold`` go
    through NMS at ``nms_threshold`` separately per class and image; the
    ``detections_per_image`` best survive.

    Args:
      box_weights: delta weights (dy, dx, dh, dw) of the box head (10, 10, 5, 5).
      score_threshold: 0.05.
      nms_threshold: per-class NMS IoU (0.5).
      detections_per_image: detections kept per image (100).
      min_box_size: smallest kept height and width in pixels after clipping (0 keeps all;
        torchvision drops boxes under 1e-2, detectron2 empty ones).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(class_logits [B, R, K + 1], box_deltas [B, R, K, 4], proposals [B, R, 4],
    proposal_valid [B, R] bool, image_size [B, 2] (h, w))`` -> dict with
    ``N = detections_per_image``: ``detection_boxes [B, N, 4]`` float32 (y1, x1, y2, x2)
    pixels, ``detection_scores [B, N]`` float32, ``detection_classes [B, N]`` int32 0-based
    foreground ids, ``num_detections [B]`` int32; sorted by score, zero padding.
    """

    def __init__(
        self,
        box_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.supports_jit = False  # NMS cannot be XLA-compiled
        self.box_weights = tuple(float(w) for w in box_weights)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.detections_per_image = detections_per_image
        self.min_box_size = float(min_box_size)

    def call(
        self,
        class_logits: tf.Tensor,
        box_deltas: tf.Tensor,
        proposals: tf.Tensor,
        proposal_valid: tf.Tensor,
        image_size: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        scores = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:]
        scores = tf.where(tf.cast(proposal_valid, tf.bool)[..., None], scores, 0.0)
        boxes = box_ops.decode(
            box_deltas, tf.cast(proposals, tf.float32)[:, :, None, :], self.box_weights
        )
        boxes = box_ops.clip_boxes(boxes, image_size)
        if self.min_box_size > 0.0:
            large = (boxes[..., 2] - boxes[..., 0] >= self.min_box_size) & (
                boxes[..., 3] - boxes[..., 1] >= self.min_box_size
            )
            scores = tf.where(large, scores, 0.0)
        boxes, scores, classes, num = batched_multiclass_nms(
            boxes,
            scores,
            max_per_class=self.detections_per_image,
            max_total=self.detections_per_image,
            iou_threshold=self.nms_threshold,
            score_threshold=self.score_threshold,
        )
        return {
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
            "num_detections": num,
        }

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...], *args: Any
    ) -> dict[str, tuple[int | None, ...]]:
        """Output shapes from the class logits' shape."""
        batch, count = input_shape[0], self.detections_per_image
        return {
            "detection_boxes": (batch, count, 4),
            "detection_scores": (batch, count),
            "detection_classes": (batch, count),
            "num_detections": (batch,),
        }
