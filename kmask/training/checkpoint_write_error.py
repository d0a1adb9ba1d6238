"""The error of a checkpoint that could not be written (a full disk, a size limit)."""

from __future__ import annotations

import errno as errno_codes
import os


class CheckpointWriteError(OSError):
    """Writing checkpoint ``path`` failed; nothing half-written is left behind and the
    previous checkpoint (``previous``, or none) is intact.

    Args:
      path: the checkpoint that was being written.
      error: the ``OSError`` of the write.
      previous: the newest complete checkpoint, or None.
    """

    def __init__(self, path: os.PathLike[str] | str, error: OSError, previous: object) -> None:
        reason = os.strerror(error.errno) if error.errno else str(error)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint"
        super().__init__(
            error.errno or errno_codes.EIO,
            f"cannot write checkpoint {path}: {reason}; nothing was left half-written and {kept}",
        )
