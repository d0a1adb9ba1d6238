"""Keras callback that stops training at the first non-finite loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras

from kmask.errors import NonFiniteLossError
from kmask.training.optimizer import optimizer_step


class NonFiniteGuard(keras.callbacks.Callback):
    """Raises ``NonFiniteLossError`` naming the step and the loss terms when a logged loss
    is NaN or infinite.

    Raising (rather than ``model.stop_training``) ends ``fit`` before any later callback
    of the same batch runs, so put this callback first: a ``CheckpointCallback`` after it
    never writes the broken weights and the last good checkpoint stays the latest.

    Works on the logs of every batch: ``MaskRCNN`` logs running means of ``loss`` and each
    ``loss_*`` term since the start of the epoch, which turn non-finite at the first
    non-finite step and stay so.

    Args:
      keys: the logged values to check; default every key starting with ``loss``.
    """

    def __init__(self, keys: Sequence[str] | None = None) -> None:
        super().__init__()
        self.keys = None if keys is None else tuple(keys)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        keys = self.keys if self.keys is not None else [k for k in logs if k.startswith("loss")]
        bad = {}
        for key in keys:
            if key in logs:
                value = float(logs[key])
                if not math.isfinite(value):
                    bad[key] = value
        if not bad:
            return
        # Name the individual terms first; the total is non-finite whenever one of them is.
        terms = tuple(sorted(bad, key=lambda k: (k == "loss", k)))
        step = optimizer_step(self.model)
        detail = ", ".join(f"{key}={bad[key]}" for key in terms)
        raise NonFiniteLossError(step, terms, detail)
