"""Inference with a Mask R-CNN, with detections mapped back to source-image pixels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kmask.config import Config, DataConfig
from kmask.data import transforms
from kmask.ops.masks import paste_masks


class Predictor:
    """Runs ``model.predict_step`` in a ``tf.function`` and converts its outputs.

    The function is traced outside any distribution strategy, so it reads the (mirrored)
    weights locally and runs no collective op: any single process may call it, e.g. the
    chief of a multi-worker run during training.

    Args:
      model: a built ``MaskRCNN``.
      data_config: how raw images are resized (``features_for_image``); the evaluation
        resizing of ``kmask.data``: shorter side ``max(min_size)``, longer side at most
        ``max_size``.
      mask_threshold: pasted mask probabilities ``>=`` this are foreground.
    """

    def __init__(self, model: keras.Model, data_config: DataConfig,
                 mask_threshold: float = 0.5) -> None:
        self.model = model
        self.data_config = data_config
        self.mask_threshold = mask_threshold
        self._predict = tf.function(model.predict_step, reduce_retracing=True)

    @classmethod
    def from_checkpoint(cls, config: Config, checkpoint: str | os.PathLike[str]) -> Predictor:
        """Builds the configured model in float32, loads a ``CheckpointCallback`` (or any
        ``model.save_weights``) file into it and wraps it.

        Raises:
          FileNotFoundError: naming the checkpoint when it does not exist.
          ValueError: naming the checkpoint when its weights do not fit the model.
        """
        from kmask.modeling.factory import build_mask_rcnn

        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            model = build_mask_rcnn(config.model)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        model.build({"images": (None, None, None, 3)})
        try:
            model.load_weights(path)
        except (ValueError, KeyError, OSError) as error:
            raise ValueError(
                f"{path}: cannot load into the configured model ({error}); does the "
                f"configuration match the one the checkpoint was trained with?"
            ) from None
        return cls(model, config.data, config.eval.mask_threshold)

    def predict_batch(self, features: dict[str, Any]) -> dict[str, np.ndarray]:
        """``model.predict_step`` on a features batch, as NumPy arrays.

        Returns the detection outputs (``detection_boxes [B, N, 4]`` (y1, x1, y2, x2) in
        resized-image pixels, ``detection_scores``, ``detection_classes`` 0-based,
        ``detection_masks [B, N, m, m]``, ``num_detections [B]``), the proposals when the
        model returns them, and ``image_id``, ``image_size``, ``original_size``.
        """
        return {key: np.asarray(value) for key, value in self._predict(features).items()}

    def image_detections(self, outputs: dict[str, np.ndarray], index: int) -> dict[str, Any]:
        """The detections of image ``index`` of a ``predict_batch`` result in source pixels.

        Returns:
          dict with ``image_id`` (int), ``original_size`` ``(H, W)``, ``boxes [n, 4]``
          float32 (y1, x1, y2, x2) in source-image pixels, ``scores [n]``, ``classes [n]``
          int32 0-based, ``masks [n, H, W]`` bool (pasted and thresholded); plus
          ``proposals [p, 4]`` in source pixels, best first, when the model returns them.
        """
        count = int(outputs["num_detections"][index])
        height, width = (int(v) for v in outputs["original_size"][index])
        resized_h, resized_w = (float(v) for v in outputs["image_size"][index])
        scale = np.array([height / resized_h, width / resized_w] * 2, np.float32)
        limit = np.array([height, width] * 2, np.float32)

        def to_source(boxes: np.ndarray) -> np.ndarray:
            return np.clip(boxes.astype(np.float32) * scale, 0.0, limit)

        boxes = to_source(outputs["detection_boxes"][index, :count])
        masks = paste_masks(
            outputs["detection_masks"][index : index + 1, :count],
            boxes[None],
            (height, width),
            threshold=self.mask_threshold,
        )[0]
        result = {
            "image_id": int(outputs["image_id"][index]),
            "original_size": (height, width),
            "boxes": boxes,
            "scores": outputs["detection_scores"][index, :count].astype(np.float32),
            "classes": outputs["detection_classes"][index, :count].astype(np.int32),
            "masks": np.asarray(masks),
        }
        if "proposals" in outputs:
            num = int(outputs["num_proposals"][index])
            result["proposals"] = to_source(outputs["proposals"][index, :num])
        return result

    def features_for_image(self, image: np.ndarray, image_id: int = 0) -> dict[str, tf.Tensor]:
        """A batch of one raw image, resized and padded as the evaluation pipeline does.

        Args:
          image: uint8 ``[H, W, 3]`` RGB.
          image_id: id carried through to the outputs.
        """
        height, width = image.shape[:2]
        example = {
            "image": tf.constant(image, tf.uint8),
            "image_id": tf.constant(image_id, tf.int64),
            "boxes": tf.zeros([0, 4], tf.float32),
            "classes": tf.zeros([0], tf.int32),
            "masks": tf.zeros([0, height, width], tf.uint8),
        }
        features, _ = transforms.preprocess(
            example, tf.constant(0, tf.int64), config=self.data_config, training=False
        )
        return {key: value[None] for key, value in features.items()}
