"""Keras layer turning RPN outputs into a fixed number of proposals per image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from kmask.ops import boxes as box_ops
from kmask.ops.levels import sorted_levels
from kmask.ops.nms import batched_multiclass_nms


@keras.saving.register_keras_serializable(package="kmask")
class ProposalGenerator(keras.layers.Layer):
    """RPN proposals, batched with static shapes (FPN paper section 4.1 and 5.2).

    Per level: the ``pre_nms_topk`` highest objectness anchors, decoded with their deltas,
    clipped to the valid image area, boxes with height or width ``<= min_box_size`` dropped;
    then NMS at ``nms_threshold`` independently per level and image, and the
    ``post_nms_topk`` highest-scoring survivors over all levels are kept.

    Args:
      pre_nms_topk_train / pre_nms_topk_test: top-k per level before NMS (2000 / 1000).
      post_nms_topk_train / post_nms_topk_test: proposals per image after NMS (2000 / 1000).
      nms_threshold: NMS IoU (0.7).
      min_box_size: proposals must be larger than this in both dimensions (pixels).
      box_weights: delta weights (dy, dx, dh, dw) of the RPN parameterization.
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(objectness {"Pk": [B, Nk]}, deltas {"Pk": [B, Nk, 4]}, anchors {"Pk": [Nk, 4]},
    image_size [B, 2] int32 (h, w), training)`` ->
    ``(proposals [B, P, 4] float32 (y1, x1, y2, x2) pixels, scores [B, P] float32
    objectness probabilities, valid [B, P] bool)`` with ``P = post_nms_topk`` for the mode,
    sorted by decreasing score, zero padding where fewer survive. No gradient flows into the
    proposals.
    """

    def __init__(
        self,
        pre_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 1000,
        post_nms_topk_train: int = 2000,
        post_nms_topk_test: int = 1000,
        nms_threshold: float = 0.7,
        min_box_size: float = 0.0,
        box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.supports_jit = False  # NMS cannot be XLA-compiled
        self.pre_nms_topk_train = pre_nms_topk_train
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_train = post_nms_topk_train
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_threshold = float(nms_threshold)
        self.min_box_size = float(min_box_size)
        self.box_weights = tuple(float(w) for w in box_weights)

    def call(
        self,
        objectness: dict[str, tf.Tensor],
        deltas: dict[str, tf.Tensor],
        anchors: dict[str, tf.Tensor],
        image_size: tf.Tensor,
        training: bool | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        pre_nms_topk = self.pre_nms_topk_train if training else self.pre_nms_topk_test
        post_nms_topk = self.post_nms_topk_train if training else self.post_nms_topk_test
        keys = sorted_levels(objectness)
        level_boxes, level_scores = [], []
        for level, key in enumerate(keys):
            logits = tf.stop_gradient(tf.cast(objectness[key], tf.float32))
            k = tf.minimum(pre_nms_topk, tf.shape(logits)[1])
            top_logits, top_index = tf.math.top_k(logits, k=k)
            top_deltas = tf.gather(tf.stop_gradient(deltas[key]), top_index, batch_dims=1)
            top_anchors = tf.gather(anchors[key], top_index)
            boxes = box_ops.decode(top_deltas, top_anchors, self.box_weights)
            boxes = box_ops.clip_boxes(boxes, image_size)
            keep = ((boxes[..., 2] - boxes[..., 0]) > self.min_box_size) & (
                (boxes[..., 3] - boxes[..., 1]) > self.min_box_size
            )
            scores = tf.where(keep, tf.sigmoid(top_logits), 0.0)
            level_boxes.append(boxes)
            # Level index as the NMS "class" so that suppression stays within a level.
            level_scores.append(scores[..., None] * tf.one_hot(level, len(keys)))
        boxes = tf.concat(level_boxes, axis=1)[:, :, None, :]
        scores = tf.concat(level_scores, axis=1)
        proposals, proposal_scores, _, num_valid = batched_multiclass_nms(
            boxes,
            scores,
            max_per_class=post_nms_topk,
            max_total=post_nms_topk,
            iou_threshold=self.nms_threshold,
            score_threshold=0.0,
        )
        valid = tf.range(post_nms_topk)[None, :] < num_valid[:, None]
        return tf.stop_gradient(proposals), tf.stop_gradient(proposal_scores), valid

    def compute_output_shape(
        self, input_shape: dict[str, tuple[int | None, ...]], *args: Any, **kwargs: Any
    ) -> tuple[tuple[int | None, ...], ...]:
        """Shapes of the outputs from the objectness shapes (inference proposal count)."""
        batch = next(iter(input_shape.values()))[0]
        count = self.post_nms_topk_test
        return (batch, count, 4), (batch, count), (batch, count)
