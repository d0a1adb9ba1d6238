"""Run directories: what ``kmask train`` and ``kmask convert-weights`` write, and what every
other command, ``kmask.load_model`` and the library read.

- ``RunDirectory``: the layout, config and categories, the lock;
- ``kmask.runs.checkpoints``: checkpoint names, the pointer file, listing, the state saved
  in a checkpoint, restoring the newest intact one;
- ``RunConfigRequest``: the configuration a training run gets (a resumed run keeps its own);
- ``InferenceSource``: a run directory or a checkpoint -> configuration, checkpoint and
  model (``load_checkpoint_model``).

Below training, evaluation, export and conversion; above config, data and modeling.
"""

from kmask.runs.checkpoints import (
    all_checkpoints,
    checkpoint_name,
    checkpoint_step,
    latest_checkpoint,
    read_checkpoint_state,
)
from kmask.runs.inference_source import InferenceSource, load_checkpoint_model
from kmask.runs.run_config_request import RunConfigRequest
from kmask.runs.run_directory import RunDirectory

__all__ = [
    "InferenceSource",
    "RunConfigRequest",
    "RunDirectory",
    "all_checkpoints",
    "checkpoint_name",
    "checkpoint_step",
    "latest_checkpoint",
    "load_checkpoint_model",
    "read_checkpoint_state",
]
