"""The error of a second ``kmask train`` on a run directory that another one is using."""

from __future__ import annotations


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
