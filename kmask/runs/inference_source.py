"""``InferenceSource``: the model a run directory or a checkpoint file holds, and how to
load it (what ``kmask.load_model`` and ``kmask predict/evaluate/export`` use)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from kmask.config import Config, ModelConfig, load_config
from kmask.data.category_map import CategoryMap
from kmask.errors import ConfigError
from kmask.modeling.factory import build_inference_model
from kmask.modeling.mask_rcnn import MaskRCNN
from kmask.runs.run_directory import RunDirectory


def load_checkpoint_model(
    model: ModelConfig, checkpoint: str | os.PathLike[str], precision: str = "float32"
) -> MaskRCNN:
    """The configured model, built to compute in ``precision`` (``InferencePrecision``:
    float32, bfloat16, float16 or auto; float32 variables in each), with the weights of
    ``checkpoint`` (a ``CheckpointCallback`` file, or any ``model.save_weights`` file)
    loaded.

    Raises:
      FileNotFoundError: naming the checkpoint when it does not exist.
      ValueError: naming the checkpoint when its weights do not fit the model, or an
        unknown precision.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    built = build_inference_model(model, precision)
    try:
        built.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(
            f"{path}: cannot load into the configured model ({error}); does the "
            f"configuration match the one the checkpoint was trained with?"
        ) from None
    return built


@dataclasses.dataclass(frozen=True)
class InferenceSource:
    """A trained model to run: its configuration, its checkpoint, and its run directory
    when it has one (``categories.json``, default output paths).

    Example::

        source = InferenceSource.resolve(run="runs/shapes")
        model = source.load_model()
        categories = source.categories() or CategoryMap.placeholder(
            source.config.model.num_classes
        )

    Args:
      config: the configuration the checkpoint was trained with.
      checkpoint: the weights file.
      run: the run directory holding the checkpoint, or None.
    """

    config: Config
    checkpoint: Path
    run: RunDirectory | None = None

    @classmethod
    def resolve(
        cls,
        run: str | os.PathLike[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        overrides: tuple[str, ...] = (),
    ) -> InferenceSource:
        """The source of a run directory (its latest checkpoint) or of a checkpoint file
        (its run directory when a ``config.yaml`` is two levels up), as ``--run`` or
        ``--checkpoint`` name it; ``config`` (+ ``overrides``) replaces the run's
        ``config.yaml``.

        Raises:
          FileNotFoundError: a run without ``config.yaml`` or checkpoint, a checkpoint
            that does not exist, or a ``config`` that names no file.
          ConfigError: a checkpoint outside a run directory without ``config``, or an
            invalid configuration.
        """
        if run is not None:
            directory = RunDirectory(run)
            if config:
                loaded = load_config(config, overrides)
            else:
                loaded = directory.load_config(overrides)
            latest = directory.latest_checkpoint()
            if latest is None:
                raise FileNotFoundError(f"no checkpoint in {directory.checkpoints_dir}")
            return cls(loaded, latest, directory)
        if checkpoint is None:
            raise ValueError("give a run directory or a checkpoint")
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path}: file not found")
        holder: RunDirectory | None = RunDirectory.of_checkpoint(path)
        if not holder.config_path.is_file():
            holder = None
        if config:
            loaded = load_config(config, overrides)
        elif holder is not None:
            loaded = holder.load_config(overrides)
        else:
            raise ConfigError(f"--config is required: no run directory config.yaml holds {path}")
        return cls(loaded, path, holder)

    def categories(self) -> CategoryMap | None:
        """The run's ``categories.json`` checked against the model
        (``RunDirectory.load_categories``); None without a run or without that file.

        Raises:
          DataError: a malformed ``categories.json`` or one that does not fit the model.
        """
        if self.run is None or not self.run.categories_path.is_file():
            return None
        return self.run.load_categories(self.config.model)

    def load_model(self, precision: str = "float32") -> MaskRCNN:
        """The model with the checkpoint's weights, computing in ``precision``
        (``load_checkpoint_model``)."""
        return load_checkpoint_model(self.config.model, self.checkpoint, precision)
