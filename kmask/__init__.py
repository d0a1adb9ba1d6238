"""kmask: Mask R-CNN with ResNet-FPN for TensorFlow 2 and Keras 3."""

from __future__ import annotations

import os
from typing import Any


def load_model(run_dir: str | os.PathLike[str]) -> Any:
    """The ``MaskRCNN`` of a run directory (``kmask train`` or ``kmask convert-weights``)
    with its latest checkpoint loaded (float32), ready for ``predict`` or fine-tuning.

    Raises:
      FileNotFoundError: without ``config.yaml`` or a checkpoint.
      ValueError: when the checkpoint does not fit the configured model.

    ``kmask.data.CategoryMap.load(run_dir + "/categories.json")`` gives its classes.
    """
    from kmask.runs.inference_source import InferenceSource

    return InferenceSource.resolve(run=run_dir).load_model()
