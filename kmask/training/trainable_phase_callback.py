"""``TrainablePhaseCallback``: a two-phase fine-tuning schedule in one run."""

from __future__ import annotations

from typing import Any

import keras

from kmask.training.optimizer import optimizer_step
from kmask.training.trainable_preset import TrainablePreset


class TrainablePhaseCallback(keras.callbacks.Callback):
    """Trains with the ``first`` preset until optimizer step ``switch_step``, then with
    ``then`` (``train.heads_first_steps``: the heads first, then the preset of
    ``model.backbone.freeze_at``, ``TrainablePreset.freezing``).

    The phase follows the optimizer step, so a resumed run continues in the right phase.
    At each change the model's train function is rebuilt (one retrace), because its
    trainable variables are fixed when it is traced. The optimizer must have been built
    with the variables of the larger phase (``Trainer`` builds it after applying
    ``then``); the momentum of the variables that wait for the second phase starts at zero
    when they start training.

    Args:
      first: the preset of steps ``[0, switch_step)``.
      then: the preset from ``switch_step`` on.
      switch_step: the first step of the second phase.
    """

    def __init__(self, first: TrainablePreset, then: TrainablePreset, switch_step: int) -> None:
        super().__init__()
        if switch_step <= 0:
            raise ValueError(f"switch_step must be positive, got {switch_step}")
        self.first = first
        self.then = then
        self.switch_step = switch_step
        self.current: TrainablePreset | None = None

    def _update(self) -> None:
        preset = self.first if optimizer_step(self.model) < self.switch_step else self.then
        if preset is self.current:
            return
        preset.apply(self.model)
        self.model.make_train_function(force=True)
        print(f"\ntrainable: {preset.name} from step {optimizer_step(self.model)}", flush=True)
        self.current = preset

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._update()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._update()
