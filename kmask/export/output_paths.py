"""Checks of an export's output path, made before any conversion or tracing work."""

from __future__ import annotations

import os
from pathlib import Path


def check_creatable(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path`` if it can be created with its missing parent folders.

    The nearest existing folder above it must be a folder and writable (``os.access``,
    which sees read-only file systems and ACLs). Whether ``path`` itself exists is the
    caller's check.

    Raises:
      NotADirectoryError: a file stands where a parent folder would be.
      PermissionError: the nearest existing folder is not writable.
    """
    path = Path(path)
    existing = path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: cannot write in the folder {existing}")
    return path


def check_output_file(path: str | os.PathLike[str], overwrite: bool, suffix: str) -> Path:
    """``path`` as a ``Path`` if a one-file export (``suffix``: ``".onnx"``, ``".tflite"``)
    may write it (missing parent folders are created); checked before any work.

    Raises:
      IsADirectoryError: ``path`` is a folder.
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      NotADirectoryError: a file stands where a parent folder would be.
      PermissionError: the nearest existing folder above ``path`` is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the {suffix} file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite)")
    return check_creatable(path)
