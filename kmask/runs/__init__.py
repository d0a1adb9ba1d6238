"""Run directories: what ``kmask train`` and ``kmask convert-weights`` write, and what every
other command, ``kmask.load_model`` and the library read (config, categories, checkpoints,
the lock, loading the model).

Below training, evaluation, export and conversion; above config, data and modeling.
"""

from kmask.runs.run_directory import RunDirectory

__all__ = ["RunDirectory"]
