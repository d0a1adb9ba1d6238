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
