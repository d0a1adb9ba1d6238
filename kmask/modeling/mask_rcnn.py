"""The detector model: built stages in, ``fit`` / ``evaluate`` / ``predict`` out."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kmask.modeling.roi_heads.instance_head import target_keys

# Feature keys passed through ``predict`` next to the detections.
PASSTHROUGH_KEYS = ("image_id", "image_size", "original_size")
_STAGES = ("normalizer", "backbone", "fpn", "rpn", "roi_heads")


@keras.saving.register_keras_serializable(package="kmask")
class MaskRCNN(keras.Model):
    """Mask R-CNN (He et al. 2017) with a feature pyramid, and its siblings, from stages.

    ``kmask.modeling.build_mask_rcnn(config)`` builds the stages from the configuration;
    this class only runs them in order and merges the stages' loss dicts:
    ``normalizer`` (``ImageNormalization``) -> ``backbone`` (``{"C2".."C5"}``) -> ``fpn``
    (``{"P2".."P6"}``) -> ``rpn`` (``RPN``: proposals and its losses) -> ``roi_heads``
    (``ROIHeads``: detections and its heads' losses; ``None`` for an RPN-only model).
    Without a mask head it is Faster R-CNN with FPN. Without ``fpn`` (``None``) the
    backbone's maps go straight to the RPN and the RoI stage: the ResNet-C4 models (Mask
    R-CNN figure 3, left), whose backbone returns ``{"C4"}`` and whose ``ROIHeads`` run
    conv5 per RoI (``Res5Head``).

    Batches are those of ``kmask.data``: ``(features, targets)`` with ``features =
    {"images" [B, H, W, 3] float32 RGB 0..255 (padded bottom/right), "image_size" [B, 2]
    int32 (h, w) of the valid area, "original_size", "image_id"}`` and ``targets =
    {"gt_boxes" [B, G, 4] float32 (y1, x1, y2, x2) pixels, "gt_classes" [B, G] int32
    0-based (-1 padding), "seed" [B] int64 (optional)}`` plus what the instance heads read
    (their ``target_keys``: "gt_masks" [B, G, M, M] uint8 box-frame masks,
    "gt_keypoints", ...; ``kmask.modeling.roi_heads.instance_head.target_keys`` lists
    them). With ``seed`` (the pipeline's training batches have it) the RPN's and
    the RoI stage's random sampling is a stateless function of each image's seed, so
    training is a pure function of the data; without it the sampling draws from
    TensorFlow's stateful random ops.

    Args:
      normalizer, backbone, fpn, rpn: the stages (layers; ``from_config`` deserializes them);
        ``fpn`` may be ``None`` (a single-level ResNet-C4 model).
      roi_heads: ``ROIHeads`` or ``None`` (RPN only).
      **kwargs: base ``keras.Model`` arguments (``name``, ...).

    Call: ``model(inputs, training=False)`` with ``inputs`` the features dict.

    - Without ground truth -> ``proposals [B, P, 4]`` (best first, P = 1000 at test),
      ``proposal_scores [B, P]``, ``num_proposals [B]`` int32 and, with RoI heads,
      ``detection_boxes [B, N, 4]`` float32 pixels of the resized image,
      ``detection_scores [B, N]``, ``detection_classes [B, N]`` int32 0-based,
      ``num_detections [B]`` int32 (N = 100) and the instance heads' outputs, e.g.
      ``detection_masks [B, N, 28, 28]`` probabilities in the box frame
      (``kmask.ops.masks.paste_masks`` pastes them).
    - Inputs merged with the targets -> the loss dict ``{name: float32 scalar}``, the union
      of the stages' losses (``loss_names``). ``training=True`` selects the training
      proposal counts (2000); ``test_step`` uses ``training=False`` (1000).
    """

    def __init__(
        self,
        normalizer: keras.layers.Layer,
        backbone: keras.layers.Layer,
        fpn: keras.layers.Layer | None,
        rpn: keras.layers.Layer,
        roi_heads: keras.layers.Layer | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)  # boxes stay float32; the stages cast themselves
        super().__init__(**kwargs)
        self.normalizer = normalizer
        self.backbone = backbone
        self.fpn = fpn
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.loss_trackers = [keras.metrics.Mean(name=key) for key in ("loss", *self.loss_names)]

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The keys of the loss dict: the RPN's, then the RoI heads'."""
        heads = () if self.roi_heads is None else self.roi_heads.loss_names
        return (*self.rpn.loss_names, *heads)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.loss_trackers)

    def build(self, inputs_shape: dict[str, tuple[int | None, ...]]) -> None:
        """Creates every weight from the shape of ``inputs_shape["images"]`` (no forward)."""
        images_shape = tuple(inputs_shape["images"])
        backbone_shape = self.backbone.compute_output_shape(images_shape)
        pyramid_shape = (
            backbone_shape if self.fpn is None else self.fpn.compute_output_shape(backbone_shape)
        )
        stages = [
            (self.backbone, images_shape),
            (self.fpn, backbone_shape),
            (self.rpn, pyramid_shape),
            (self.roi_heads, pyramid_shape),
        ]
        # Stages passed in already built (e.g. a trained backbone) keep their weights.
        for layer, shape in stages:
            if layer is not None and not layer.built:
                layer.build(shape)
        self.built = True

    def call(
        self, inputs: dict[str, tf.Tensor], training: bool | None = None
    ) -> dict[str, tf.Tensor]:
        image_size = tf.cast(inputs["image_size"], tf.int32)
        images = self.normalizer(inputs["images"], image_size)
        pyramid = self.backbone(images, training=training)
        if self.fpn is not None:
            pyramid = self.fpn(pyramid, training=training)
        targets = {key: inputs[key] for key in target_keys() if key in inputs} or None
        proposals, losses = self.rpn(pyramid, image_size, targets=targets, training=training)
        if targets is not None:
            if self.roi_heads is not None:
                losses.update(
                    self.roi_heads(
                        pyramid,
                        proposals["proposals"],
                        proposals["proposal_valid"],
                        image_size,
                        targets=targets,
                        training=training,
                    )
                )
            return losses
        valid = proposals.pop("proposal_valid")
        outputs = {**proposals, "num_proposals": tf.reduce_sum(tf.cast(valid, tf.int32), 1)}
        if self.roi_heads is not None:
            outputs.update(self.roi_heads(pyramid, proposals["proposals"], valid, image_size))
        return outputs

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
            losses = self(inputs, training=True)
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
        losses = self(self._merge(data), training=False)
        return self._update_trackers(losses, tf.add_n(list(losses.values())))

    def predict_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Detections for a features dict (or a ``(features, targets)`` tuple).

        Returns the outputs of ``call`` plus ``image_id``, ``image_size`` and
        ``original_size`` when the features carry them.
        """
        features = data[0] if isinstance(data, (tuple, list)) else data
        ground_truth = target_keys()
        inputs = {key: value for key, value in features.items() if key not in ground_truth}
        outputs = self(inputs, training=False)
        passthrough = {key: inputs[key] for key in PASSTHROUGH_KEYS if key in inputs}
        return {**outputs, **passthrough}

    def get_config(self) -> dict[str, Any]:
        config = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype_policy.name}
        for key in _STAGES:
            stage = getattr(self, key)
            config[key] = None if stage is None else keras.saving.serialize_keras_object(stage)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskRCNN:
        config = dict(config)
        for key in _STAGES:
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
