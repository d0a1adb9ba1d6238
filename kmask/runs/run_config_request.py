"""``RunConfigRequest``: the configuration a training run is asked for, and the one it gets
(a new run's, or a resumed run's own ``config.yaml``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from kmask.config import Config, config_to_dict, load_config
from kmask.errors import ConfigError
from kmask.runs.run_directory import RunDirectory


@dataclasses.dataclass(frozen=True)
class RunConfigRequest:
    """What ``kmask train`` is asked: an experiment YAML, ``key=value`` overrides, and paths
    that replace the configuration's data paths (each made absolute, so that the run's
    ``config.yaml`` reads the same data from any working directory).

    Example::

        request = RunConfigRequest("configs/shapes_tiny.yaml", ("train.max_steps=500",))
        config = request.resolve(RunDirectory("runs/shapes"), resume=False)

    Args:
      config: experiment YAML path or name; optional when resuming a run that has a
        ``config.yaml``.
      overrides: ``key=value`` config overrides (``--set``).
      train_json, train_images, train_tfrecords: ``train.json_path``, ``images_dir``,
        ``tfrecord_pattern``.
      val_json, val_images: ``eval.json_path``, ``eval.images_dir``.
      init_from: ``train.init_from`` (fine-tuning).
    """

    config: str | None = None
    overrides: tuple[str, ...] = ()
    train_json: str | None = None
    train_images: str | None = None
    train_tfrecords: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    init_from: str | None = None

    def resolve(self, run: RunDirectory, resume: bool) -> Config:
        """The run's configuration: ``config`` (+ ``overrides``) for a new run; the run's
        ``config.yaml`` (+ ``overrides``) when resuming a run that has one, where a
        ``config`` that differs from it in any field is refused. The paths apply to both.

        Raises:
          ConfigError: no ``config`` for a new run, a ``config`` that differs from a
            resumed run's (naming the fields), or an invalid configuration.
          FileNotFoundError: ``config`` names no file.
        """
        if resume and run.config_path.is_file():
            config = self.apply(run.load_config(self.overrides))
            if self.config:
                requested = self.apply(load_config(self.config, self.overrides))
                given = _flatten(config_to_dict(requested))
                saved = _flatten(config_to_dict(config))
                differ = sorted(k for k in saved if saved[k] != given.get(k))
                if differ:
                    raise ConfigError(
                        f"--config {self.config} differs from {run.config_path} in "
                        f"{', '.join(differ)}; a resumed run keeps its config.yaml (change "
                        f"fields such as train.max_steps with --set)"
                    )
            return config
        if not self.config:
            raise ConfigError("--config is required (unless --resume finds DIR/config.yaml)")
        return self.apply(load_config(self.config, self.overrides))

    def apply(self, config: Config) -> Config:
        """``config`` with the requested paths in place and every data path absolute."""
        train, evaluation = config.train, config.eval
        train = dataclasses.replace(
            train,
            json_path=_absolute(self.train_json or train.json_path),
            images_dir=_absolute(self.train_images or train.images_dir),
            tfrecord_pattern=_absolute(self.train_tfrecords or train.tfrecord_pattern),
        )
        if self.init_from:
            train = dataclasses.replace(train, init_from=_absolute(self.init_from))
        evaluation = dataclasses.replace(
            evaluation,
            json_path=_absolute(self.val_json or evaluation.json_path),
            images_dir=_absolute(self.val_images or evaluation.images_dir),
        )
        return dataclasses.replace(config, train=train, eval=evaluation)


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
