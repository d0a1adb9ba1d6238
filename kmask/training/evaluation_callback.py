"""Keras callback running the COCO evaluation every N epochs during training."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from kmask.config import DataConfig
from kmask.evaluation.coco_evaluator import COCOEvaluator
from kmask.evaluation.predictor import Predictor
from kmask.training.optimizer import optimizer_step


class EvaluationCallback(keras.callbacks.Callback):
    """Evaluates the model on a validation set every ``every_epochs`` epochs.

    The metrics of ``COCOEvaluator.evaluate`` go into the epoch logs as ``val_<name>``
    (``val_bbox_AP``, ``val_segm_AP``, ``val_AR@1000``, ...), so callbacks after this one
    (``TensorBoardCallback``, ``keras.callbacks.CSVLogger``, ...) record them, and a table
    is printed. Only the chief evaluates in multi-worker training.

    Args:
      evaluator: holds the validation annotations and categories.
      batches: the validation pipeline (``build_dataset(..., training=False)``), iterated
        once per evaluation.
      data_config: the run's data configuration (for the ``Predictor``).
      every_epochs: evaluation period in epochs.
      total_batches: number of batches, for the progress bar.
      mask_threshold: mask binarization threshold.
      is_chief: whether this process evaluates.
    """

    def __init__(
        self,
        evaluator: COCOEvaluator,
        batches: Iterable[Any],
        data_config: DataConfig,
        every_epochs: int,
        total_batches: int | None = None,
        mask_threshold: float = 0.5,
        is_chief: bool = True,
    ) -> None:
        super().__init__()
        if every_epochs <= 0:
            raise ValueError(f"every_epochs must be positive, got {every_epochs}")
        self.evaluator = evaluator
        self.batches = batches
        self.data_config = data_config
        self.every_epochs = every_epochs
        self.total_batches = total_batches
        self.mask_threshold = mask_threshold
        self.is_chief = is_chief
        self.last_metrics: dict[str, float] = {}
        self._predictor: Predictor | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.is_chief or (epoch + 1) % self.every_epochs:
            return
        if self._predictor is None:
            self._predictor = Predictor(self.model, self.data_config, self.mask_threshold)
        self.last_metrics = self.evaluator.run(self._predictor, self.batches, self.total_batches)
        step = optimizer_step(self.model)
        print(
            f"\nevaluation at step {step} ({self.evaluator.json_path}):\n"
            f"{self.evaluator.summary(self.last_metrics)}",
            flush=True,
        )
        if logs is not None:
            logs.update({f"val_{key}": value for key, value in self.last_metrics.items()})
