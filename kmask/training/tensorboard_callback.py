"""Keras callback writing losses, learning rate, epoch metrics and prediction images to
TensorBoard."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kmask.evaluation.predictor import Predictor
from kmask.training.optimizer import optimizer_step
from kmask.visualization import draw_image_detections


class TensorBoardCallback(keras.callbacks.Callback):
    """TensorBoard summaries of a ``MaskRCNN`` training run, in ``log_dir/train``.

    - every ``log_every`` steps: ``losses/<key>`` for ``loss`` and each ``loss_*`` term,
      the mean over the steps since the previous point (recovered exactly from the running
      epoch means that ``fit`` logs: ``(n m_n - k m_k) / (n - k)``), and ``learning_rate``,
      the rate of the last step;
    - every epoch: ``epoch/<key>`` for every epoch log (including the ``val_*`` metrics
      an ``EvaluationCallback`` earlier in the list adds), and ``predictions/<i>``: the
      validation images of ``visualization_batch`` with the predictions drawn over them:
      masks (Mask R-CNN only), boxes, class names and scores, or the best proposals of an
      RPN-only model (the mode is read off the model's outputs).

    Args:
      log_dir: the run's ``logs`` directory.
      log_every: scalar logging period in steps.
      schedule: the optimizer's learning rate schedule (logged at the last step); None =
        log the optimizer's current ``learning_rate``.
      visualization_batch: a features batch (``kmask.data`` format) of validation images,
        or None for no images.
      predictor: runs the model on ``visualization_batch`` (required with it).
      class_names: names of the classes, for the labels.
      keypoint_skeleton: keypoint index pairs joined in the drawings (Keypoint R-CNN).
      score_threshold: detections drawn from this score.
      num_proposals: proposals drawn per image for an RPN-only model.
      is_chief: only the chief writes (multi-worker training).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        log_every: int,
        schedule: keras.optimizers.schedules.LearningRateSchedule | None = None,
        visualization_batch: dict[str, Any] | None = None,
        predictor: Predictor | None = None,
        class_names: Sequence[str] = (),
        keypoint_skeleton: Sequence[tuple[int, int]] = (),
        score_threshold: float = 0.5,
        num_proposals: int = 20,
        is_chief: bool = True,
    ) -> None:
        super().__init__()
        if visualization_batch is not None and predictor is None:
            raise ValueError("visualization_batch needs a predictor")
        self.log_dir = Path(log_dir)
        self.log_every = log_every
        self.schedule = schedule
        self.visualization_batch = visualization_batch
        self.predictor = predictor
        self.class_names = tuple(class_names)
        self.keypoint_skeleton = tuple(keypoint_skeleton)
        self.score_threshold = score_threshold
        self.num_proposals = num_proposals
        self.is_chief = is_chief
        self._writer: Any = None
        self._previous: tuple[int, dict[str, float]] = (0, {})

    def _get_writer(self) -> Any:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir / "train"))
        return self._writer

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._previous = (0, {})

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        step = optimizer_step(self.model)
        if not self.is_chief or step % self.log_every:
            return
        count = batch + 1
        means = {k: float(v) for k, v in (logs or {}).items() if k.startswith("loss")}
        previous_count, previous = self._previous
        with self._get_writer().as_default(step=step):
            for key, mean in means.items():
                window = (count * mean - previous_count * previous.get(key, 0.0)) / (
                    count - previous_count
                )
                tf.summary.scalar(f"losses/{key}", window)
            tf.summary.scalar("learning_rate", self._learning_rate(step - 1))
        self._previous = (count, means)

    def _learning_rate(self, step: int) -> float:
        if self.schedule is not None:
            return float(self.schedule(step))
        return float(self.model.optimizer.learning_rate)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.is_chief:
            return
        step = optimizer_step(self.model)
        with self._get_writer().as_default(step=step):
            for key, value in (logs or {}).items():
                tf.summary.scalar(f"epoch/{key}", float(value))
            if self.visualization_batch is not None:
                for index, picture in enumerate(self.draw_predictions()):
                    tf.summary.image(f"predictions/{index}", picture[None], step=step)
        self._writer.flush()

    def draw_predictions(self) -> list[np.ndarray]:
        """The visualization images with the current model's predictions drawn over them
        (in resized-image pixels), uint8 ``[H, W, 3]`` each: detections with masks (Mask
        R-CNN) or without (Faster R-CNN), and keypoints (Keypoint R-CNN), scoring ``>=
        score_threshold``, or the ``num_proposals`` best proposals of an RPN-only model."""
        outputs = self.predictor.predict_batch(self.visualization_batch)
        images = np.asarray(self.visualization_batch["images"])
        pictures = []
        for index, detections in enumerate(
            self.predictor.batch_detections(outputs, source_pixels=False)
        ):
            height, width = (int(round(float(v))) for v in outputs["image_size"][index])
            image = np.clip(images[index, :height, :width], 0, 255).astype(np.uint8)
            pictures.append(
                draw_image_detections(
                    image,
                    detections,
                    self.class_names,
                    self.score_threshold,
                    self.num_proposals,
                    self.keypoint_skeleton,
                )
            )
        return pictures

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()
