"""Every error kmask raises on purpose, in one module (the exception to "one public class
per module": each is a few lines, and one place to look is worth more).

All derive from the built-in error a caller would catch without knowing kmask
(``ValueError`` for bad input, ``RuntimeError`` for a state of the world, ``OSError`` for a
write), and each message names the file, key, annotation or argument at fault.
"""

from __future__ import annotations

import errno as errno_codes
import os


class ConfigError(ValueError):
    """A configuration file or override does not fit the schema."""


class DataError(ValueError):
    """Bad input data: a JSON that is not COCO, or (strict mode) a bad image or annotation.

    The message names the file and, where there is one, the image id and the key.
    """


class ConversionError(ValueError):
    """A checkpoint that cannot be converted: wrong file format, a pickle naming a global
    that would run code, missing or extra keys, weights that are not floating point or not
    finite, or a shape mismatch. The message names the file, the key (or the global) and the
    shapes."""


class WeightTransferError(ValueError):
    """A source of ``WeightTransfer`` cannot be read, or a weight other than a class-dependent
    one has a different shape in the source and in the model; the message names the file,
    the layer and both shapes."""


class BuildError(RuntimeError):
    """The custom op could not be compiled; the message carries the compiler output and
    ``fix`` says what to do about it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock (``RunDirectory.lock``).

    Attributes:
      owner: the process id the lock file names ("unknown" when it names none).
    """

    def __init__(self, path: str, owner: str) -> None:
        self.owner = owner
        super().__init__(
            f"{path} is in use by another kmask train (pid {owner}); wait for it to end or "
            "choose another --out"
        )


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or weights).

    Attributes:
      step: the optimizer step whose loss (or resulting weights) is not finite (1-based:
        the number of updates applied when it was detected).
      terms: the names of the non-finite loss terms, e.g. ``("loss_mask",)``, or
        ``("weights",)``.
    """

    def __init__(self, step: int, terms: tuple[str, ...], detail: str = "") -> None:
        self.step = step
        self.terms = terms
        message = f"non-finite {', '.join(terms)} at step {step}"
        super().__init__(f"{message}: {detail}" if detail else message)


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
