"""Writes a converted model as a run directory, all at once or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kmask.config import Config
from kmask.data.category_map import CategoryMap
from kmask.data.output_folder import OutputFolder

BACKBONE_FILE = "backbone.npz"


def write_converted_run(
    out: str | os.PathLike[str],
    config: Config,
    model: keras.Model | keras.layers.Layer,
    categories: list[dict[str, Any]] | None,
    overwrite: bool = False,
    keras_file: bool = False,
) -> Path:
    """Writes ``out`` as a run directory that ``kmask predict/evaluate/export --run`` and
    ``kmask.load_model`` read: ``config.yaml``, ``categories.json`` and
    ``checkpoints/ckpt-00000000.weights.h5`` (plus ``model.keras`` with ``keras_file``).
    For an ImageNet backbone (``model`` a layer): ``backbone.npz`` (what
    ``model.backbone.weights`` loads) and a ``config.yaml`` whose ``model.input`` and
    ``model.backbone`` sections use it.

    Everything is written into a temporary sibling directory that is renamed to ``out``
    at the end, so an interrupted conversion leaves no directory that looks complete
    (``OutputFolder.write``; the run is marked as kmask's, kind ``run``).

    Raises:
      FileExistsError: when ``out`` exists and ``overwrite`` is False, or ``overwrite``
        may not replace it (``OutputFolder.problem``: not a folder kmask wrote, foreign
        files in it, a ``kmask train`` holding its lock).
    """
    import dataclasses

    from kmask.runs.checkpoints import checkpoint_name, write_pointer
    from kmask.runs.run_directory import RunDirectory

    out = Path(out).absolute()
    with OutputFolder(out, "run").write(overwrite) as temporary:
        run = RunDirectory(temporary)
        if isinstance(model, keras.Model):
            run.write_config(config)
            run.write_categories(CategoryMap(categories or [], str(run.categories_path)))
            run.checkpoints_dir.mkdir(parents=True)
            checkpoint = run.checkpoints_dir / checkpoint_name(0)
            model.save_weights(checkpoint)
            write_pointer(run.checkpoints_dir, checkpoint, [checkpoint])
            if keras_file:
                model.save(temporary / "model.keras")
        else:
            arrays = {
                f"{name}/{i}": np.asarray(value)
                for name, layer in model._weighted_layers().items()
                for i, value in enumerate(layer.get_weights())
            }
            np.savez(temporary / BACKBONE_FILE, **arrays)
            backbone = dataclasses.replace(config.model.backbone, weights=str(out / BACKBONE_FILE))
            run.write_config(
                dataclasses.replace(
                    config, model=dataclasses.replace(config.model, backbone=backbone)
                )
            )
    return out
