"""Counting, warning about and (in strict mode) refusing bad input."""

from __future__ import annotations

import collections
import logging
import threading

from kmask.errors import DataError

logger = logging.getLogger("kmask.data")


class BadInputReport:
    """Collects problems found in a dataset: each is logged once and counted by reason.

    Two severities: ``skip`` (an image or annotation left out; an error when ``strict``)
    and ``fix`` (repaired, e.g. a box clipped to the image; counted, never an error).
    Thread-safe: the parallel readers of one dataset share one report. ``error`` keeps the
    first strict ``DataError``, so that code which receives it wrapped (a ``tf.data``
    reader's error reaches ``fit`` as a TensorFlow error) can show it as it is.

    Args:
      source: the dataset file named in every message.
      strict: raise ``DataError`` at the first skip instead of warning.
    """

    def __init__(self, source: str, strict: bool = False) -> None:
        self.source = source
        self.strict = strict
        self._skipped: collections.Counter[str] = collections.Counter()
        self._fixed: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._images_seen: set[int] = set()
        self._summary_logged = False
        self.error: DataError | None = None

    def skip(
        self, reason: str, image_id: int | None, file_name: str | None, detail: str = ""
    ) -> None:
        """Records one skipped image or annotation; raises ``DataError`` when strict."""
        where = f"image id {image_id}" if image_id is not None else "dataset"
        if file_name:
            where += f" ({file_name})"
        message = f"{self.source}: {where}: {reason}" + (f": {detail}" if detail else "")
        if self.strict:
            error = DataError(message + " (strict mode)")
            with self._lock:
                self.error = self.error or error
            raise error
        with self._lock:
            self._skipped[reason] += 1
        logger.warning("skipped: %s", message)

    def fix(self, reason: str) -> None:
        """Counts one repaired item (no per-item warning)."""
        with self._lock:
            self._fixed[reason] += 1

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped items by reason."""
        with self._lock:
            return dict(self._skipped)

    @property
    def fixed(self) -> dict[str, int]:
        """Repaired items by reason."""
        with self._lock:
            return dict(self._fixed)

    def summary(self) -> str:
        """One line per reason, skips first; ``"no bad input"`` when there is none."""
        with self._lock:
            lines = [f"skipped {n} x {reason}" for reason, n in sorted(self._skipped.items())]
            lines += [f"fixed {n} x {reason}" for reason, n in sorted(self._fixed.items())]
        if not lines:
            return f"{self.source}: no bad input"
        return f"{self.source}: bad input summary\n  " + "\n  ".join(lines)

    def image_seen(self, image_id: int, total: int) -> None:
        """Notes that an image was read; logs the summary once all ``total`` were (one epoch)."""
        with self._lock:
            if self._summary_logged:
                return
            self._images_seen.add(image_id)
            done = len(self._images_seen) >= total
            if done:
                self._summary_logged = True
                self._images_seen = set()
        if done:
            if self._skipped or self._fixed:
                logger.warning("end of the first epoch: %s", self.summary())
            else:
                logger.info("end of the first epoch: %s", self.summary())
