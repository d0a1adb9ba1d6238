"""Inference with a Mask R-CNN, Faster R-CNN or RPN-only model, with its detections or
proposals mapped back to source-image pixels."""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kmask.config import Config, DataConfig
from kmask.data import transforms
from kmask.evaluation.detector_mode import DetectorMode
from kmask.modeling.roi_heads.instance_head import OutputKind, head_outputs, point_origins
from kmask.ops.masks import paste_masks

# Segment proposal masks pasted per paste_masks call.
_PASTE_CHUNK = 100


class Predictor:
    """Runs ``model.predict_step`` in a ``tf.function`` and converts its outputs.

    Works with every detector mode (``DetectorMode``, decided from the outputs present):
    Mask R-CNN (detections with masks), Faster R-CNN (detections without masks) and RPN
    only (proposals without detections).

    Example::

        predictor = Predictor.from_checkpoint(config, "runs/x/checkpoints/ckpt-1.weights.h5")
        outputs = predictor.predict_batch(predictor.features_for_image(rgb_uint8))
        detections = predictor.image_detections(outputs, 0)  # boxes in rgb_uint8's pixels

    The function is traced outside any distribution strategy, so it reads the (mirrored)
    weights locally and runs no collective op: any single process may call it, e.g. the
    chief of a multi-worker run during training.

    Args:
      model: a built ``MaskRCNN`` (any object with a Keras-style ``predict_step``).
      data_config: how raw images are resized (``features_for_image``); the evaluation
        resizing of ``kmask.data``: shorter side ``max(min_size)``, longer side at most
        ``max_size``.
      mask_threshold: pasted mask probabilities ``>=`` this are foreground.
      mask_paste: ``kmask.ops.masks.paste_masks`` method ("exact", or "torchvision" for
        models converted from torchvision).
    """

    def __init__(
        self,
        model: keras.Model,
        data_config: DataConfig,
        mask_threshold: float = 0.5,
        mask_paste: str = "exact",
    ) -> None:
        self.model = model
        self.data_config = data_config
        self.mask_threshold = mask_threshold
        self.mask_paste = mask_paste
        self._predict = tf.function(model.predict_step)
        self._graphs: dict[tuple[Any, ...], Any] = {}
        self._point_origins = point_origins(model) if hasattr(model, "roi_heads") else {}

    @classmethod
    def from_checkpoint(
        cls, config: Config, checkpoint: str | os.PathLike[str], precision: str = "float32"
    ) -> Predictor:
        """Builds the configured model to compute in ``precision``
        (``kmask.modeling.inference_precision.InferencePrecision``: float32, bfloat16,
        float16 or auto), loads a ``CheckpointCallback`` (or any ``model.save_weights``)
        file into it and wraps it.

        Raises:
          FileNotFoundError: naming the checkpoint when it does not exist.
          ValueError: naming the checkpoint when its weights do not fit the model, or an
            unknown precision.
        """
        from kmask.runs.inference_source import load_checkpoint_model

        model = load_checkpoint_model(config.model, checkpoint, precision)
        return cls(model, config.data, config.eval.mask_threshold, config.eval.mask_paste)

    def predict_batch(self, features: dict[str, Any]) -> dict[str, np.ndarray]:
        """``model.predict_step`` on a features batch, as NumPy arrays; each image's
        outputs are those it gets alone.

        The images are grouped by padded size (``transforms.padded_image_size`` of their
        ``image_size``) and each group runs cropped to that size, so an image is padded
        exactly as it is alone, whatever the sizes of its batch mates (a batch of mixed
        sizes, zero-padded to the largest, would change the features near each smaller
        image's border and its detections with them).

        Args:
          features: a ``kmask.data`` features batch (``images [B, H, W, 3]`` float32 and
            ``image_size [B, 2]``, with ``image_id [B]`` and ``original_size [B, 2]``
            passed through), e.g. ``features_for_image``.

        Returns:
          What the model outputs for its mode (``DetectorMode``), all boxes
          ``(y1, x1, y2, x2)`` float32 in resized-image pixels:

          - detections (Mask R-CNN and Faster R-CNN): ``detection_boxes [B, N, 4]``,
            ``detection_scores [B, N]``, ``detection_classes [B, N]`` int32 0-based,
            ``num_detections [B]``; Mask R-CNN also ``detection_masks [B, N, m, m]``
            probabilities in the box frame; Keypoint R-CNN ``detection_keypoints [B, N,
            K, 3]`` ``(x, y, score)``;
          - proposals (every mode; the only output of an RPN-only model):
            ``proposals [B, P, 4]`` best first, ``proposal_scores [B, P]``,
            ``num_proposals [B]``;
          - passed through: ``image_id [B]``, ``image_size [B, 2]``, ``original_size [B, 2]``.
        """
        sizes = np.asarray(features["image_size"], np.int32).reshape(-1, 2)
        padded = np.broadcast_to(
            np.asarray(transforms.padded_image_size(sizes, self.data_config)), sizes.shape
        )
        groups, group_of = np.unique(padded, axis=0, return_inverse=True)
        results: dict[str, np.ndarray] = {}
        for group, (height, width) in enumerate(groups):
            indices = np.flatnonzero(group_of.reshape(-1) == group)
            batch = {key: tf.gather(value, indices) for key, value in features.items()}
            batch["images"] = batch["images"][:, :height, :width]
            for key, value in self._graph(batch)(batch).items():
                value = np.asarray(value)
                if key not in results:
                    results[key] = np.zeros((len(sizes), *value.shape[1:]), value.dtype)
                results[key][indices] = value
        return results

    def _graph(self, batch: dict[str, tf.Tensor]) -> Any:
        """The one traced graph for batches with these keys, dtypes and ranks: every
        dimension unknown but the last of a matrix or image (channels, coordinates), so
        every image runs the same graph whatever its size and whatever ran before it (a
        graph traced for a static shape rounds a few float32 sums differently)."""
        specs = {
            name: tf.TensorSpec([None] * (value.shape.rank - 1) + value.shape[-1:], value.dtype)
            if value.shape.rank > 1
            else tf.TensorSpec([None] * value.shape.rank, value.dtype)
            for name, value in batch.items()
        }
        key = tuple(
            sorted((name, spec.dtype.name, str(spec.shape)) for name, spec in specs.items())
        )
        if key not in self._graphs:
            self._graphs[key] = self._predict.get_concrete_function(specs)
        return self._graphs[key]

    def image_detections(
        self, outputs: dict[str, np.ndarray], index: int, source_pixels: bool = True
    ) -> dict[str, Any]:
        """The predictions of image ``index`` of a ``predict_batch`` result.

        Only the first ``num_detections`` / ``num_proposals`` entries are kept (zero gives
        empty arrays of the right shapes).

        Args:
          outputs: a ``predict_batch`` result, in any ``DetectorMode``.
          index: the image's position in the batch.
          source_pixels: map boxes and masks to the source image (``original_size``);
            False keeps the resized image's pixels (``image_size``).

        Returns:
          dict with ``image_id`` (int; the batch index when the outputs carry no ids) and
          ``original_size`` ``(H, W)``; boxes are float32 ``(y1, x1, y2, x2)`` clipped to
          the target image (``H x W`` source or resized pixels as ``source_pixels`` says):

          - with detections: ``boxes [n, 4]``, ``scores [n]`` float32, ``classes [n]``
            int32 0-based, and each instance head's outputs under their detection keys
            (``InstanceHead.outputs``), mapped as their ``OutputKind`` says: Mask R-CNN's
            ``masks [n, H, W]`` bool (box-frame maps pasted at the target size and
            thresholded at ``mask_threshold``); Keypoint R-CNN's ``keypoints [n, K, 3]``
            float32 ``(x, y, score)`` in the target pixels (continuous coordinates, not
            clipped);
          - with proposals: ``proposals [p, 4]``, best first, and ``proposal_scores [p]``
            when the model returns them; segment proposals also ``proposal_masks [p, H, W]``
            bool (each window's mask pasted through its unclipped window, thresholded at
            ``mask_threshold``).
        """
        mode = DetectorMode.from_outputs(outputs)
        resized_h, resized_w = (float(v) for v in outputs["image_size"][index])
        if "original_size" in outputs:
            source_h, source_w = (int(v) for v in outputs["original_size"][index])
        else:
            source_h, source_w = int(resized_h), int(resized_w)
        if source_pixels:
            height, width = source_h, source_w
        else:
            height, width = int(round(resized_h)), int(round(resized_w))
        scale = np.array([height / resized_h, width / resized_w] * 2, np.float32)
        limit = np.array([height, width] * 2, np.float32)

        def to_target(boxes: np.ndarray) -> np.ndarray:
            return np.clip(boxes.reshape(-1, 4).astype(np.float32) * scale, 0.0, limit)

        image_id = int(outputs["image_id"][index]) if "image_id" in outputs else index
        result: dict[str, Any] = {"image_id": image_id, "original_size": (source_h, source_w)}
        if mode.has_detections:
            count = _valid_count(outputs, "num_detections", "detection_boxes", index)
            boxes = to_target(outputs["detection_boxes"][index, :count])
            result["boxes"] = boxes
            result["scores"] = outputs["detection_scores"][index, :count].astype(np.float32)
            result["classes"] = outputs["detection_classes"][index, :count].astype(np.int32)
            for output in head_outputs().values():
                if output.key not in outputs:
                    continue
                values = outputs[output.key][index, :count]
                if output.kind is OutputKind.BOX_FRAME:
                    pasted = paste_masks(
                        values[None],
                        boxes[None],
                        (height, width),
                        threshold=self.mask_threshold,
                        method=self.mask_paste,
                    )
                    result[output.detection_key] = np.asarray(pasted[0])
                else:
                    values = output.to_source(
                        values.astype(np.float32),
                        scale[0],
                        scale[1],
                        self._point_origins.get(output.key, 0.0),
                    )
                    result[output.detection_key] = np.asarray(values)
        if "proposals" in outputs:
            count = _valid_count(outputs, "num_proposals", "proposals", index)
            windows = outputs["proposals"][index, :count].reshape(-1, 4).astype(np.float32)
            result["proposals"] = to_target(windows)
            if "proposal_masks" in outputs:
                result["proposal_masks"] = self._paste(
                    outputs["proposal_masks"][index, :count], windows * scale, (height, width)
                )
            if "proposal_scores" in outputs:
                result["proposal_scores"] = outputs["proposal_scores"][index, :count].astype(
                    np.float32
                )
        return result

    def _paste(
        self, masks: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int]
    ) -> np.ndarray:
        """``paste_masks`` of ``masks [n, m, m]`` in ``boxes [n, 4]`` -> ``[n, H, W]`` bool,
        ``_PASTE_CHUNK`` masks at a time (a thousand proposals at once would need gigabytes
        of float32 at COCO sizes)."""
        pasted = [np.zeros((0, *image_shape), bool)]
        for start in range(0, len(masks), _PASTE_CHUNK):
            chunk = paste_masks(
                masks[None, start : start + _PASTE_CHUNK],
                boxes[None, start : start + _PASTE_CHUNK],
                image_shape,
                threshold=self.mask_threshold,
                method=self.mask_paste,
            )
            pasted.append(np.asarray(chunk[0]))
        return np.concatenate(pasted)

    def batch_detections(
        self, outputs: dict[str, np.ndarray], source_pixels: bool = True
    ) -> list[dict[str, Any]]:
        """``image_detections`` of every image of a ``predict_batch`` result."""
        key = "detection_boxes" if "detection_boxes" in outputs else "proposals"
        if key not in outputs:
            DetectorMode.from_outputs(outputs)  # raises, naming the keys
        return [
            self.image_detections(outputs, index, source_pixels)
            for index in range(len(outputs[key]))
        ]

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


def _valid_count(outputs: dict[str, np.ndarray], count_key: str, array_key: str, index: int) -> int:
    """``outputs[count_key][index]`` clipped to ``[0, padded size]``; the padded size when
    the count is missing."""
    size = outputs[array_key].shape[1]
    if count_key not in outputs:
        return size
    return int(np.clip(int(outputs[count_key][index]), 0, size))
