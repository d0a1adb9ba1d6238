"""Keras callback writing atomic, rotating checkpoints of the model and optimizer."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from kmask.errors import CheckpointWriteError, NonFiniteLossError
from kmask.runs.checkpoints import (
    STATE_ATTRIBUTE,
    all_checkpoints,
    checkpoint_name,
    latest_checkpoint,
    write_pointer,
)
from kmask.training.optimizer import optimizer_step

# Free space kept beyond the variables' bytes (HDF5 metadata, the pointer file).
_HEADROOM = 16 * 2**20


class CheckpointCallback(keras.callbacks.Callback):
    """Saves ``model.save_weights`` files (the model's and the optimizer's variables,
    including the step counter, so the learning rate schedule resumes exactly).

    A checkpoint is written to a temporary name in the same directory, flushed to disk and
    renamed to ``ckpt-<step>.weights.h5`` (an atomic replace); the pointer file
    ``checkpoint`` (JSON: ``latest``, ``step``, ``checkpoints``) is rewritten the same way
    after it, and only then are checkpoints beyond the newest ``keep`` deleted. A process
    killed at any moment therefore leaves at worst a stray temporary file (removed at the
    next start) and never a pointer to an incomplete file. Weights that are not finite are
    never written: the save raises ``NonFiniteLossError`` instead.

    ``state``, when given, is called at each save; what it returns (JSON) is written into
    the same file, as the ``kmask_state`` attribute of its root group, before the file is
    renamed into place, so it is always that of the checkpoint's step (the ``Trainer``
    keeps its input stream position there). ``kmask.runs.checkpoints`` names, lists and
    restores the checkpoints and reads the state back (``read_checkpoint_state``); Keras'
    ``load_weights`` ignores it.

    Args:
      directory: where the checkpoints go (created when needed).
      every_steps: save when the optimizer step is a multiple of this.
      keep: how many of the newest checkpoints to keep.
      save_on_train_end: also save the final step when ``fit`` ends normally.
      is_chief: only the chief writes (multi-worker training); the others do nothing.
      state: returns the JSON-serializable state saved with each checkpoint.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every_steps: int,
        keep: int = 3,
        save_on_train_end: bool = True,
        is_chief: bool = True,
        state: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if every_steps <= 0 or keep <= 0:
            raise ValueError(f"every_steps and keep must be positive, got {every_steps}, {keep}")
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.keep = keep
        self.save_on_train_end = save_on_train_end
        self.is_chief = is_chief
        self.state = state
        self.last_saved_step: int | None = None

    def _saved(self) -> list[Any]:
        """The variables a checkpoint holds: the model's and its optimizer's."""
        optimizer = getattr(self.model, "optimizer", None)
        return [*self.model.weights, *(optimizer.variables if optimizer is not None else [])]

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.is_chief:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for stray in self.directory.glob(".tmp-*"):
            stray.unlink(missing_ok=True)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        step = optimizer_step(self.model)
        if step % self.every_steps == 0:
            self.save(step)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.save_on_train_end:
            self.save(optimizer_step(self.model))

    def save(self, step: int) -> Path | None:
        """Writes the checkpoint of ``step`` (once per step); returns its path on the chief.

        Raises:
          NonFiniteLossError: when a model weight is NaN or infinite (nothing is written).
          CheckpointWriteError: when the file cannot be written (no space left, ...);
            nothing half-written is left and the previous checkpoint stays the latest.
        """
        if not self.is_chief or step == self.last_saved_step:
            return None
        for variable in self.model.trainable_variables:
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable))):
                raise NonFiniteLossError(step, ("weights",), f"variable {variable.path}")
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / checkpoint_name(step)
        temporary = self.directory / f".tmp-{os.getpid()}-{final.name}"
        older = [p for p in all_checkpoints(self.directory) if p != final]
        kept = (older[-(self.keep - 1) :] if self.keep > 1 else []) + [final]
        # A write that fails half-way leaves HDF5 in a state that can crash the process at
        # exit: refuse up front when the disk cannot hold the checkpoint.
        needed = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in self._saved())
        free = shutil.disk_usage(self.directory).free
        if free < needed + _HEADROOM:
            error = OSError(errno.ENOSPC, f"{free} bytes free, about {needed} needed")
            raise CheckpointWriteError(final, error, latest_checkpoint(self.directory))
        try:
            self.model.save_weights(temporary)
            if self.state is not None:
                with h5py.File(temporary, "a") as handle:
                    handle.attrs[STATE_ATTRIBUTE] = json.dumps(dict(self.state()))
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            write_pointer(self.directory, final, kept)
        except OSError as error:  # a full disk, a file size limit, ...
            raise CheckpointWriteError(final, error, latest_checkpoint(self.directory)) from None
        finally:
            temporary.unlink(missing_ok=True)
        for old in older:
            if old not in kept:
                old.unlink(missing_ok=True)
        self.last_saved_step = step
        return final
