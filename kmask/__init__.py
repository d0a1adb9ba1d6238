"""kmask: Mask R-CNN with ResNet-FPN for TensorFlow 2 and Keras 3."""

from __future__ import annotations

import os
from typing import Any


def load_model(
    run_dir: str | os.PathLike[str], batch_size: int = 4, precision: str = "float32"
) -> Any:
    """The ``kmask.evaluation.Detector`` of a run directory (``kmask train`` or ``kmask
    convert-weights``): its latest checkpoint loaded, its classes, ready for
    ``detect(images)``; ``.model`` is the Keras ``MaskRCNN`` (fine-tuning, export).

    Example::

        detector = kmask.load_model("runs/shapes_tiny")
        result = detector.detect("photo.jpg")  # boxes, scores, class_ids, class_names,
        picture = result.draw()                # masks, keypoints in photo.jpg's pixels

    Args:
      run_dir: the run directory.
      batch_size: images per model call in ``detect``.
      precision: what the model computes in: ``float32``, ``bfloat16`` (several times
        faster on CPUs with AMX and on recent GPUs), ``float16`` (GPUs) or ``auto``
        (bfloat16 where it is native, else float32;
        ``kmask.modeling.inference_precision.InferencePrecision``).

    Raises:
      FileNotFoundError: without ``config.yaml`` or a checkpoint.
      ValueError: when the checkpoint does not fit the configured model.
      DataError: a ``categories.json`` that does not fit the model.
    """
    from kmask.evaluation.detector import Detector
    from kmask.runs.inference_source import InferenceSource

    return Detector.from_source(InferenceSource.resolve(run=run_dir), batch_size, precision)
