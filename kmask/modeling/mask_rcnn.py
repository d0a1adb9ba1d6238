"""The Mask R-CNN model: built components in, ``fit`` / ``evaluate`` / ``predict`` out."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.modeling.losses import LOSS_KEYS

# Target keys of the data pipeline's batches (everything else is a model input).
TARGET_KEYS = ("gt_boxes", "gt_classes", "gt_masks", "gt_keypoints")
# Feature keys passed through ``predict`` next to the detections.
PASSTHROUGH_KEYS = ("image_id", "image_size", "original_size")
_COMPONENTS = (
    "backbone",
    "fpn",
    "anchor_generator",
    "rpn",
    "proposal_generator",
    "rpn_target_assigner",
    "roi_heads",
    "losses_layer",
)


def _level_keys(tensors: dict[str, Any]) -> list[str]:
    return sorted(tensors, key=lambda name: int(name[1:]))


@keras.saving.register_keras_serializable(package="kmask")
class MaskRCNN(keras.Model):
    """Mask R-CNN (He et al. 2017) with a feature pyramid, from built components.

    ``kmask.modeling.build_mask_rcnn(config)`` builds the components from the configuration;
    this class only wires them. Batches are those of ``kmask.data``: ``(features, targets)``
    with ``features = {"images" [B, H, W, 3] float32 RGB 0..255 (padded bottom/right),
    "image_size" [B, 2] int32 (h, w) of the valid area, "original_size", "image_id"}`` and
    ``targets = {"gt_boxes" [B, G, 4] float32 (y1, x1, y2, x2) pixels, "gt_classes" [B, G]
    int32 0-based (-1 padding), "gt_masks" [B, G, M, M] uint8 box-frame masks}`` (see
    ``kmask.ops.masks``).

    Args:
      backbone: ``images -> {"C2".."C5"}`` (e.g. ``ResNet``).
      fpn: ``{"C2".."C5"} -> {"P2".."P6"}`` (``FPN``).
      anchor_generator: ``AnchorGenerator``.
      rpn: ``RPN`` head.
      proposal_generator: ``ProposalGenerator``.
      rpn_target_assigner: ``RPNTargetAssigner``.
      roi_heads: ``ROIHeads`` (box and mask branches, sampling, post-processing).
      losses_layer: ``Losses``.
      **kwargs: base ``keras.Model`` arguments (``name``, ...).

    Call: ``model(inputs, training=False)`` with ``inputs`` the features dict.

    - Inputs without ground truth -> detections: ``detection_boxes [B, N, 4]`` float32
      pixels of the resized image, ``detection_scores [B, N]``, ``detection_classes [B, N]``
      int32 0-based, ``detection_masks [B, N, 28, 28]`` probabilities in the box frame
      (``kmask.ops.masks.paste_masks`` pastes them), ``num_detections [B]`` int32
      (N = 100); plus the RPN's ``proposals [B, P, 4]`` (best first, P = 1000) and
      ``num_proposals [B]`` int32 for proposal-recall evaluation.
    - Inputs merged with the targets -> the training dict the loss consumes (the network
      is never re-run by the loss): ``rpn_logits [B, 256]``, ``rpn_labels [B, 256]``,
      ``rpn_deltas [B, 256, 4]``, ``rpn_box_targets [B, 256, 4]`` for the sampled anchors,
      ``proposals [B, P, 4]``, and the ``ROIHeads`` training outputs (``rois``,
      ``class_logits``, ``class_targets``, ``box_deltas``, ``box_targets``, ``mask_logits``,
      ``mask_targets``, ``mask_classes``). ``training=True`` selects the training proposal
      counts (2000); ``test_step`` uses ``training=False`` (1000).
    """

    def __init__(
        self,
        backbone: keras.layers.Layer,
        fpn: keras.layers.Layer,
        anchor_generator: keras.layers.Layer,
        rpn: keras.layers.Layer,
        proposal_generator: keras.layers.Layer,
        rpn_target_assigner: keras.layers.Layer,
        roi_heads: keras.layers.Layer,
        losses_layer: keras.layers.Layer,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.fpn = fpn
        self.anchor_generator = anchor_generator
        self.rpn = rpn
        self.proposal_generator = proposal_generator
        self.rpn_target_assigner = rpn_target_assigner
        self.roi_heads = roi_heads
        self.losses_layer = losses_layer
        self.loss_trackers = [keras.metrics.Mean(name=key) for key in ("loss", *LOSS_KEYS)]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.loss_trackers)

    def build(self, inputs_shape: dict[str, tuple[int | None, ...]]) -> None:
        """Creates every weight from the shape of ``inputs_shape["images"]`` (no forward)."""
        images_shape = tuple(inputs_shape["images"])
        backbone_shape = self.backbone.compute_output_shape(images_shape)
        pyramid_shape = self.fpn.compute_output_shape(backbone_shape)
        # Components deserialized from a saved model arrive already built.
        for layer, shape in (
            (self.backbone, images_shape),
            (self.fpn, backbone_shape),
            (self.rpn, pyramid_shape),
            (self.roi_heads, pyramid_shape),
            (self.losses_layer, None),
        ):
            if not layer.built:
                layer.build(shape)
        self.built = True

    def call(
        self, inputs: dict[str, tf.Tensor], training: bool | None = None
    ) -> dict[str, tf.Tensor]:
        image_size = tf.cast(inputs["image_size"], tf.int32)
        pyramid = self.fpn(self.backbone(inputs["images"]))
        anchors = self.anchor_generator(pyramid)
        objectness, deltas = self.rpn(pyramid)
        proposals, _, proposal_valid = self.proposal_generator(
            objectness, deltas, anchors, image_size, training=training
        )
        if "gt_boxes" not in inputs:
            detections = self.roi_heads(pyramid, proposals, proposal_valid, image_size)
            num_proposals = tf.reduce_sum(tf.cast(proposal_valid, tf.int32), axis=1)
            return {**detections, "proposals": proposals, "num_proposals": num_proposals}
        gt_boxes = tf.cast(inputs["gt_boxes"], tf.float32)
        gt_classes = tf.cast(inputs["gt_classes"], tf.int32)
        keys = _level_keys(objectness)
        indices, labels, box_targets = self.rpn_target_assigner(
            tf.concat([anchors[key] for key in keys], axis=0), gt_boxes, gt_classes
        )
        all_logits = tf.concat([objectness[key] for key in keys], axis=1)
        all_deltas = tf.concat([deltas[key] for key in keys], axis=1)
        heads = self.roi_heads(
            pyramid,
            proposals,
            proposal_valid,
            image_size,
            gt_boxes=gt_boxes,
            gt_classes=gt_classes,
            gt_masks=inputs["gt_masks"],
        )
        return {
            "rpn_logits": tf.gather(all_logits, indices, batch_dims=1),
            "rpn_labels": labels,
            "rpn_deltas": tf.gather(all_deltas, indices, batch_dims=1),
            "rpn_box_targets": box_targets,
            "proposals": proposals,
            **heads,
        }

    @staticmethod
    def _merge(data: Any) -> dict[str, tf.Tensor]:
        features, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        return {**features, **(targets or {})}

    def _update_trackers(
        self, losses: dict[str, tf.Tensor], total: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        values = {"loss": total, **losses}
        for tracker in self.loss_trackers:
            tracker.update_state(values[tracker.name])
        return {tracker.name: tracker.result() for tracker in self.loss_trackers}

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One SGD step on ``(features, targets)``; returns running means of the losses."""
        inputs = self._merge(data)
        with tf.GradientTape() as tape:
            outputs = self(inputs, training=True)
            losses = self.losses_layer(outputs)
            total = tf.add_n(list(losses.values()))
            if self.losses:
                total += tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])
            # tf.distribute sums the replicas' gradients: each replica contributes its
            # loss / replicas, so the sum is the gradient of the global batch's mean loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(total / replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(losses, total)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Losses on ``(features, targets)`` with inference-mode proposals."""
        outputs = self(self._merge(data), training=False)
        losses = self.losses_layer(outputs)
        return self._update_trackers(losses, tf.add_n(list(losses.values())))

    def predict_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Detections for a features dict (or a ``(features, targets)`` tuple).

        Returns the five detection outputs plus ``image_id``, ``image_size`` and
        ``original_size`` when the features carry them.
        """
        features = data[0] if isinstance(data, (tuple, list)) else data
        inputs = {key: value for key, value in features.items() if key not in TARGET_KEYS}
        outputs = self(inputs, training=False)
        passthrough = {key: inputs[key] for key in PASSTHROUGH_KEYS if key in inputs}
        return {**outputs, **passthrough}

    def get_config(self) -> dict[str, Any]:
        config = {"name": self.name, "trainable": self.trainable}
        for key in _COMPONENTS:
            config[key] = keras.saving.serialize_keras_object(getattr(self, key))
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskRCNN:
        config = dict(config)
        for key in _COMPONENTS:
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
