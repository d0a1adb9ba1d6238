"""The run directory of ``kmask train --out DIR`` and how the other commands read it.

Layout::

    DIR/config.yaml        the resolved configuration (every field, absolute data paths)
    DIR/categories.json    the training set's categories (class k <-> original COCO id)
    DIR/checkpoints/       ckpt-00001000.weights.h5 ... and the pointer file "checkpoint"
    DIR/logs/              TensorBoard event files (train/ and eval/)
    DIR/metrics.json       flat COCO metrics of the last ``kmask evaluate``
    DIR/results.json       COCO-format detections of the last ``kmask evaluate``
    DIR/predictions/       PNGs and detections.json of ``kmask predict``
    DIR/.lock              the pid of the ``kmask train`` that is writing the directory
    DIR/.kmask-output      the marker of a folder kmask wrote (``OutputFolder``, kind "run"):
                           what ``--overwrite`` of ``kmask convert-weights`` may replace

Every file is written under a temporary name and renamed into place (``write_atomic``), so
a killed process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kmask.config import Config, ModelConfig, config_to_dict, load_config
from kmask.data.category_map import CategoryMap
from kmask.data.image_io import write_atomic
from kmask.data.output_folder import OutputFolder
from kmask.errors import ConfigError, RunLockedError
from kmask.runs.checkpoints import latest_checkpoint


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    write_atomic(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Writes ``value`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")


class RunDirectory:
    """Paths and contents of a run directory (see the module docstring).

    Args:
      path: the directory (``--out`` of ``kmask train``, ``--run`` of the others).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.categories_path = self.path / "categories.json"
        self.checkpoints_dir = self.path / "checkpoints"
        self.logs_dir = self.path / "logs"
        self.metrics_path = self.path / "metrics.json"
        self.results_path = self.path / "results.json"
        self.predictions_dir = self.path / "predictions"
        self.lock_path = self.path / ".lock"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds an exclusive ``flock`` on ``DIR/.lock`` (which names this process's pid).

        The kernel releases the lock when the process ends in any way (a crash or SIGKILL
        included), so a stale lock file never blocks a later run.

        Raises:
          RunLockedError: another process holds the lock; the message names its pid.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 (held open while locked)
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                raise RunLockedError(str(self.path), handle.read().strip() or "unknown") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            handle.close()

    def write_config(self, config: Config) -> None:
        """Writes ``config.yaml`` (every field, so the file alone reproduces the run) and
        marks the directory as a kmask run (``.kmask-output``) unless it has a marker."""
        self.path.mkdir(parents=True, exist_ok=True)
        OutputFolder.mark(self.path, "run")
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        atomic_write_text(self.config_path, text)

    def load_config(self, overrides: tuple[str, ...] = ()) -> Config:
        """Reads ``config.yaml`` with ``key=value`` overrides applied.

        Raises:
          FileNotFoundError: naming the directory when it has no ``config.yaml``.
        """
        if not self.config_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a kmask run directory: {self.config_path} not found"
            )
        return load_config(self.config_path, overrides)

    def write_categories(self, categories: CategoryMap) -> None:
        """Writes ``categories.json`` (the COCO ``categories`` list)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.categories_path, categories.to_json() + "\n")

    def load_categories(self, model: ModelConfig | None = None) -> CategoryMap:
        """The categories the run was trained on; with ``model``, checked against its
        classes and keypoints (``CategoryMap.check_model``).

        Raises:
          DataError: naming ``categories.json`` when it is missing, malformed, or does not
            fit ``model``.
        """
        categories = CategoryMap.load(self.categories_path)
        if model is not None:
            head = model.keypoint_head
            categories.check_model(model.num_classes, head.num_keypoints if head else 0)
        return categories

    def check_categories(self, categories: CategoryMap) -> None:
        """Raises ``ConfigError`` when the run has a ``categories.json`` whose category ids
        differ from ``categories`` (the training data of a resumed run)."""
        if not self.categories_path.is_file():
            return
        saved = self.load_categories()
        if saved.category_ids != categories.category_ids:
            raise ConfigError(
                f"the training data's category ids {list(categories.category_ids)} differ "
                f"from the run's {self.categories_path}: {list(saved.category_ids)}"
            )

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None (``kmask.runs.checkpoints``)."""
        return latest_checkpoint(self.checkpoints_dir)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike[str]) -> RunDirectory:
        """The run directory that holds ``checkpoint`` (``DIR/checkpoints/FILE``)."""
        return cls(Path(checkpoint).resolve().parent.parent)
