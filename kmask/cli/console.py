"""What every ``kmask`` command writes to the console besides its results: its errors
(``fail``, the one error and exit-status path) and nothing of TensorFlow's start-up."""

from __future__ import annotations

import os
import sys


def fail(command: str, message: str, status: int = 1) -> int:
    """Prints ``kmask COMMAND: error: MESSAGE`` to stderr and returns ``status``: every
    error (and skipped input) of every command is reported here and nowhere else.

    Exit statuses: 1 the work failed, 2 a usage error (refused before any work), 130
    interrupted (Ctrl-C).
    """
    print(f"kmask {command}: error: {message}", file=sys.stderr)
    return status


def import_tensorflow_quietly(verbose: bool = False) -> None:
    """Imports TensorFlow without its start-up log lines (CUDA probing, CPU features).

    ``TF_CPP_MIN_LOG_LEVEL=3`` silences TensorFlow's own C++ logging; the lines that XLA
    writes through absl before logging is initialized ignore it, so stderr is pointed at
    /dev/null for the import only. An import error still raises (and prints) as usual.
    ``kmask --verbose`` or ``KMASK_VERBOSE=1`` keeps everything; an imported TensorFlow
    is left alone.
    """
    if verbose or os.environ.get("KMASK_VERBOSE") or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
