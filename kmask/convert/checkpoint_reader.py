"""Reads the public checkpoint files into ``{key: numpy array}``.

- torchvision ``.pth``: a ``state_dict`` saved by ``torch.save`` (a zip archive, or the
  legacy pickle format). Reading it needs PyTorch (``pip install kmask[convert]``).
- detectron2 ``.pkl``: a pickled dict of NumPy arrays, read without PyTorch. Model-zoo
  files hold ``{"model": {...}, "__author__": ...}``; the MSRA / FAIR ImageNet backbones
  (``R-50.pkl``, ``R-101.pkl``, ``X-101-32x8d.pkl``) hold Caffe2 blob names, optionally
  under ``"blobs"``, whose ``*_momentum`` entries are solver state and are dropped.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kmask.convert.conversion_error import ConversionError


def _as_arrays(values: Mapping[str, Any], path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, value in values.items():
        if hasattr(value, "detach"):  # a torch.Tensor
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value)
            except Exception as error:
                raise ConversionError(f"{path}: key {key!r} is not an array ({error})") from None
        if value.dtype == object or not (
            np.issubdtype(value.dtype, np.number) or value.dtype == bool
        ):
            raise ConversionError(f"{path}: key {key!r} is not a numeric array ({value.dtype})")
        arrays[str(key)] = value
    return arrays


def read_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The ``state_dict`` of a torchvision ``.pth`` file (``{"model": ...}`` wrappers too).

    Raises:
      ConversionError: naming the file when it is not a ``torch.save`` file of tensors.
      ImportError: when PyTorch is not installed.
    """
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path} needs PyTorch: pip install 'kmask[convert]' (or torch)"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConversionError(
            f"{path}: not a PyTorch state_dict file ({type(error).__name__}: {error})"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(f"{path}: expected a state_dict (a dict of tensors)")
    return _as_arrays(state, path)


def read_detectron2_pickle(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a detectron2 / Caffe2 ``.pkl`` file (see the module docstring).

    Raises:
      ConversionError: naming the file when it is not such a pickle.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path}: a zip archive (a PyTorch .pth file?), not a detectron2 .pkl; "
            "use --from torchvision for torchvision checkpoints"
        )
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle, encoding="latin1")
    except Exception as error:
        raise ConversionError(
            f"{path}: not a detectron2 .pkl file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(data, Mapping):
        raise ConversionError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    if isinstance(data.get("model"), Mapping):
        data = data["model"]
    elif isinstance(data.get("blobs"), Mapping):
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    if not data:
        raise ConversionError(f"{path}: holds no arrays")
    return _as_arrays(data, path)
