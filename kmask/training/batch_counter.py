"""``BatchCounter``: how many batches ``fit`` trained on."""

from __future__ import annotations

from typing import Any

import keras


class BatchCounter(keras.callbacks.Callback):
    """Counts the batches ``fit`` trained on, so that a caller can tell a ``fit`` that ran
    out of data before its steps (``Trainer``: the training data gave too few batches).

    Example::

        counter = BatchCounter()
        model.fit(dataset, steps_per_epoch=10, callbacks=[counter])
        counter.batches  # 10, or fewer when the dataset ended early

    ``batches`` keeps counting across ``fit`` calls until it is set back to 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches += 1
