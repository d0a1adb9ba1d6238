"""Folders that a kmask command writes as a whole, and when ``--overwrite`` may replace one.

Every such folder holds a marker file, ``.kmask-output``: one line of JSON naming what
kmask wrote there, e.g. ``{"written_by": "kmask", "kind": "run"}``. Kinds and their
top-level layout (anything else in the folder is foreign):

- ``run``: a training run (``kmask train``) or a converted one (``kmask
  convert-weights``): ``config.yaml``, ``categories.json``, ``checkpoints/``, ``logs/``,
  ``metrics.json``, ``results.json``, ``predictions/``, ``.lock``, ``model.keras``,
  ``backbone.npz``;
- ``cityscapes``: ``kmask convert-cityscapes``: ``instances_*.json``, their
  ``instances_*-NNNNN-of-MMMMM.tfrecord`` shards and ``categories.json``.

Folders written by kmask before the marker existed are recognised by their layout: a run
holds ``config.yaml``, a Cityscapes conversion an ``instances_*.json``, and nothing
foreign. Half-written temporaries of ``write_atomic`` (``.NAME.tmp-PID``) count as kmask's.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from kmask.data.image_io import write_atomic

MARKER = ".kmask-output"
LOCK_FILE = ".lock"
LAYOUTS = {
    "run": (
        "config.yaml",
        "categories.json",
        "checkpoints",
        "logs",
        "metrics.json",
        "results.json",
        "predictions",
        LOCK_FILE,
        "model.keras",
        "backbone.npz",
    ),
    "cityscapes": ("instances_*.json", "instances_*-?????-of-?????.tfrecord", "categories.json"),
}
# What a folder of each kind written before the marker existed holds.
_LEGACY_SIGNS = {"run": "config.yaml", "cityscapes": "instances_*.json"}
_TEMPORARY = ".*.tmp-*"  # write_atomic's temporaries
# Inside a staging folder (``.tmp-NAME-PID-XXXXXXXX``): the file that makes it recognisably
# kmask's, the new output, and the output it replaces while the two are swapped.
_STAGING_FILE = "kmask-staging"
_NEW = "new"
_OLD = "old"
_FOREIGN_SHOWN = 10


class OutputFolder:
    """An output folder of kmask (``--out``) of one kind (see the module docstring).

    ``check`` refuses, with the reason, to write where something not kmask's would be lost;
    ``write`` stages the new folder beside ``path`` and swaps it in only when complete.

    Example::

        folder = OutputFolder("runs/converted", "run", inputs=["model.pth"])
        folder.check(overwrite=True)  # before the work: FileExistsError naming why not
        with folder.write(overwrite=True) as staging:
            (staging / "config.yaml").write_text(...)  # becomes runs/converted/config.yaml

    Args:
      path: the folder (``--out``).
      kind: ``"run"`` or ``"cityscapes"`` (a key of ``LAYOUTS``).
      inputs: files and folders the command reads: never inside or equal to ``path``, and
        ``path`` never inside one of the folders.
    """

    def __init__(
        self, path: str | os.PathLike[str], kind: str, inputs: Sequence[str | os.PathLike[str]] = ()
    ) -> None:
        if kind not in LAYOUTS:
            raise ValueError(f"unknown output kind {kind!r}; choose one of {sorted(LAYOUTS)}")
        self.path = Path(path)
        self.kind = kind
        self.inputs = tuple(Path(p) for p in inputs)

    @staticmethod
    def mark(folder: str | os.PathLike[str], kind: str) -> None:
        """Writes the marker of ``kind`` into ``folder`` unless it has one."""
        marker = Path(folder) / MARKER
        if not marker.exists():
            write_atomic(
                marker, (json.dumps({"written_by": "kmask", "kind": kind}) + "\n").encode()
            )

    def problem(self, overwrite: bool) -> str | None:
        """Why ``path`` may not be written (with ``overwrite``: replaced), or None."""
        out = self.path.resolve()
        for source in self.inputs:
            if source.resolve() == out:
                return f"is the input {source}; choose another --out"
            if source.resolve().is_relative_to(out):
                return f"holds the input {source}; choose another --out"
            if source.is_dir() and out.is_relative_to(source.resolve()):
                return f"lies inside the input folder {source}; choose another --out"
        if not os.path.lexists(self.path):
            return None
        if not overwrite:
            return "exists; pass --overwrite to replace it"
        if self.path.is_symlink() or not self.path.is_dir():
            what = "a symbolic link" if self.path.is_symlink() else "not a folder"
            return f"is {what}; --overwrite replaces only a folder that kmask wrote"
        with _run_lock(self.path / LOCK_FILE) as owner:
            pass
        if owner is not None:
            return (
                f"is in use by kmask train (pid {owner}), which holds {self.path / LOCK_FILE}; "
                "wait for it to end or choose another --out"
            )
        try:
            entries = sorted(os.listdir(self.path))
        except OSError as error:
            return f"cannot be listed ({error.strerror}); choose another --out"
        kind = _marker_kind(self.path)
        if kind is not None and kind != self.kind:
            return f"holds a kmask {kind} output, not a {self.kind}; choose another --out"
        foreign = [name for name in entries if not self._known(name)]
        if foreign:
            shown = ", ".join(foreign[:_FOREIGN_SHOWN])
            more = (
                f" and {len(foreign) - _FOREIGN_SHOWN} more"
                if len(foreign) > _FOREIGN_SHOWN
                else ""
            )
            return (
                f"holds files kmask did not write: {shown}{more}; move them away or choose "
                "another --out"
            )
        legacy = any(fnmatch.fnmatchcase(name, _LEGACY_SIGNS[self.kind]) for name in entries)
        if kind is None and entries and not legacy:
            return (
                f"is not a kmask {self.kind} folder (no {MARKER} marker, no "
                f"{_LEGACY_SIGNS[self.kind]}); remove it yourself or choose another --out"
            )
        return None

    def check(self, overwrite: bool) -> None:
        """Raises ``FileExistsError`` ("--out PATH REASON") when ``problem`` names one."""
        reason = self.problem(overwrite)
        if reason is not None:
            raise FileExistsError(f"--out {self.path} {reason}")

    @contextlib.contextmanager
    def write(self, overwrite: bool) -> Iterator[Path]:
        """Yields an empty, marked staging folder to write the output into; when the block
        ends without an error it replaces ``path`` (checked again first), else it is
        removed and ``path`` is left as it was.

        The staging folder lives in ``.tmp-NAME-PID-XXXXXXXX`` beside ``path``, which this
        process holds an ``flock`` on until the end; such folders whose lock is free (their
        process died, e.g. of SIGKILL) are removed first (``remove_stale_staging``).

        Raises:
          FileExistsError: see ``check``.
        """
        self.remove_stale_staging()  # first: it may put back an output a kill left aside
        self.check(overwrite)
        out = self.path.absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-{os.getpid()}-", dir=out.parent))
        handle = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            (work / _STAGING_FILE).write_text(f"{os.getpid()}\n")
            staging = work / _NEW
            staging.mkdir()
            self.mark(staging, self.kind)
            yield staging
            self.check(overwrite)
            with _run_lock(out / LOCK_FILE) as owner:
                if owner is not None:  # a kmask train started meanwhile
                    raise FileExistsError(
                        f"--out {out} is in use by kmask train (pid {owner}); nothing was replaced"
                    )
                replaced = os.path.lexists(out)
                if replaced:
                    os.replace(out, work / _OLD)
                try:
                    os.replace(staging, out)
                except BaseException:
                    if replaced:
                        os.replace(work / _OLD, out)
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            os.close(handle)

    def remove_stale_staging(self) -> list[Path]:
        """Removes the staging folders of ``path`` whose process is gone (their ``flock``
        is free; see ``write``) and returns them; an old output such a process had moved
        aside but not yet replaced (``path`` missing) is put back first. Only folders named
        ``.tmp-NAME-PID-XXXXXXXX`` that hold kmask's staging file are touched."""
        out = self.path.absolute()
        pattern = re.compile(rf"\.tmp-{re.escape(out.name)}-\d+-[A-Za-z0-9_]{{8}}")
        removed = []
        for work in sorted(out.parent.glob(".tmp-*")) if out.parent.is_dir() else []:
            if not pattern.fullmatch(work.name) or work.is_symlink() or not work.is_dir():
                continue
            if not (work / _STAGING_FILE).is_file():
                continue
            handle = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
            try:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process still writes it
                if (work / _OLD).is_dir() and not os.path.lexists(out):
                    os.replace(work / _OLD, out)  # killed between the two renames
                shutil.rmtree(work)
                removed.append(work)
            finally:
                os.close(handle)
        return removed

    def _known(self, name: str) -> bool:
        patterns = (MARKER, _TEMPORARY, *LAYOUTS[self.kind])
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@contextlib.contextmanager
def _run_lock(lock_file: Path) -> Iterator[str | None]:
    """Takes the ``flock`` of a run's lock file (``RunDirectory.lock``) without waiting and
    holds it for the block, so that no ``kmask train`` starts meanwhile. Yields None when
    it is held (or there is no lock file), else the pid written in it ("unknown" when
    empty) of the process that holds it."""
    try:
        handle = open(lock_file)  # noqa: SIM115 (closed below)
    except (FileNotFoundError, NotADirectoryError):
        yield None
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield handle.read().strip() or "unknown"
            return
        yield None


def _marker_kind(folder: Path) -> str | None:
    """The kind the marker of ``folder`` names, or None without a readable marker."""
    try:
        kind = json.loads((folder / MARKER).read_text())["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kind if isinstance(kind, str) else None
