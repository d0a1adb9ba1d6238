"""The checkpoints of a run directory (``DIR/checkpoints/``): their names, the pointer
file, the state saved inside them, listing them and restoring the newest intact one.

A checkpoint is a ``model.save_weights`` file (the model's and its optimizer's variables)
named after the optimizer step it was saved at, ``ckpt-00001000.weights.h5``; the pointer
file ``checkpoint`` (JSON: ``latest``, ``step``, ``checkpoints``) names the newest one.
``kmask.training.CheckpointCallback`` writes them; everything here only reads, except
``write_pointer``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import keras

from kmask.data.image_io import write_atomic

_NAME = re.compile(r"^ckpt-(\d+)\.weights\.h5$")
# The pointer file's name, in the checkpoints folder.
POINTER = "checkpoint"
# Attribute of a checkpoint file's root group that holds its ``state`` JSON.
STATE_ATTRIBUTE = "kmask_state"

State = TypeVar("State")


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after ``step`` optimizer steps."""
    return f"ckpt-{step:08d}.weights.h5"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step a checkpoint file name encodes (``ValueError`` for other names)."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a kmask checkpoint name (ckpt-NNNNNNNN.weights.h5)")
    return int(match.group(1))


def all_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint the pointer file names, or the newest file when the pointer is
    missing or stale; None when there is no checkpoint."""
    directory = Path(directory)
    pointer = directory / POINTER
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["latest"]
            if (directory / name).is_file():
                return directory / name
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    found = all_checkpoints(directory)
    return found[-1] if found else None


def write_pointer(directory: str | os.PathLike[str], latest: Path, kept: list[Path]) -> None:
    """Writes the pointer file of ``directory`` (atomically): ``latest`` is the newest
    checkpoint, ``kept`` every checkpoint the folder keeps (``latest`` included)."""
    record = {
        "latest": latest.name,
        "step": checkpoint_step(latest),
        "checkpoints": [path.name for path in kept],
    }
    write_atomic(Path(directory) / POINTER, (json.dumps(record, indent=1) + "\n").encode())


def read_checkpoint_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``state`` saved in the checkpoint ``path`` (``CheckpointCallback(state=...)``);
    None when it has none. Keras' ``load_weights`` ignores it.

    Raises:
      OSError: the file cannot be read as HDF5.
      ValueError: the state is not a JSON object.
    """
    with h5py.File(path, "r") as handle:
        text = handle.attrs.get(STATE_ATTRIBUTE)
    if text is None:
        return None
    state = json.loads(text)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: the saved state is not a JSON object")
    return state


def restore_checkpoint(
    model: keras.Model,
    directory: str | os.PathLike[str],
    first: Path,
    read_state: Callable[[Path], State] = read_checkpoint_state,
) -> tuple[Path, int, State]:
    """Loads into ``model`` the newest intact checkpoint of ``directory``, ``first``
    first, then the others newest first; returns its path, step and ``read_state(path)``.

    A checkpoint that cannot be read (truncated, damaged), whose optimizer step differs
    from its name, or whose state ``read_state`` refuses (``ValueError``, ``KeyError``) is
    skipped with a warning naming it.

    Args:
      model: built and compiled, its optimizer's variables created.
      directory: the checkpoints folder.
      first: the checkpoint tried first (``latest_checkpoint``).
      read_state: reads (and checks) what the caller needs of a checkpoint's state;
        default ``read_checkpoint_state``.

    Raises:
      FileNotFoundError: no checkpoint of ``directory`` could be loaded (each named with
        its problem).
    """
    candidates = [first] + [p for p in reversed(all_checkpoints(directory)) if p != first]
    problems = []
    for path in candidates:
        try:
            model.load_weights(path)
            step = int(model.optimizer.iterations.numpy())
            if step != checkpoint_step(path):
                raise ValueError(
                    f"holds optimizer step {step}, its name says {checkpoint_step(path)}"
                )
            return path, step, read_state(path)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            problems.append(f"{path}: {problem}")
            print(
                f"kmask: warning: cannot resume from {path} ({problem}); trying an older "
                "checkpoint",
                file=sys.stderr,
                flush=True,
            )
    raise FileNotFoundError(f"no intact checkpoint in {directory}: " + "; ".join(problems))
