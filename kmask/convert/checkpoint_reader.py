"""Reads the public checkpoint files into ``{key: numpy array}``.

- torchvision ``.pth``: a ``state_dict`` saved by ``torch.save`` (a zip archive, or the
  legacy pickle format), read with ``torch.load(weights_only=True)``, which builds tensors
  and plain containers only. Reading it needs PyTorch (``pip install kmask[convert]``).
  Floating tensors NumPy has no type for (bfloat16, float8) are upcast to float32; sparse,
  meta and quantized tensors are refused by key.
- detectron2 ``.pkl``: a pickled dict of NumPy arrays, read without PyTorch by
  ``RestrictedUnpickler``, which refuses any global but NumPy's array constructors (a
  ``.pkl`` can run code when read with plain ``pickle.load``). Model-zoo files hold
  ``{"model": {...}, "__author__": ...}``; the MSRA / FAIR ImageNet backbones
  (``R-50.pkl``, ``R-101.pkl``, ``X-101-32x8d.pkl``) hold Caffe2 blob names, optionally
  under ``"blobs"``, whose ``*_momentum`` entries are solver state and are dropped.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kmask.convert.restricted_unpickler import RestrictedUnpickler
from kmask.errors import ConversionError

# The first PyTorch release whose torch.load(weights_only=True) has the fixes of the known
# ways for a crafted file to run code (CVE-2025-32434: 2.6, CVE-2026-24747: 2.10).
_SAFE_TORCH = (2, 10)


def _as_arrays(values: Mapping[str, Any], path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, value in values.items():
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
      ConversionError: naming the file when it is not a ``torch.save`` file of tensors,
        and the key of a tensor that is sparse, meta or quantized.
      ImportError: when PyTorch is not installed, or older than 2.10.
    """
    path = Path(path)
    try:
        import torch
        from torch.torch_version import TorchVersion
    except ImportError:
        raise ImportError(
            f"reading {path} needs PyTorch: pip install 'kmask[convert]' (or torch)"
        ) from None
    if TorchVersion(torch.__version__) < _SAFE_TORCH:
        raise ImportError(
            f"reading {path} safely needs PyTorch {'.'.join(map(str, _SAFE_TORCH))} or newer "
            f"(this is {torch.__version__}, whose torch.load(weights_only=True) a crafted file "
            "can make run code: CVE-2025-32434, CVE-2026-24747): pip install 'kmask[convert]'"
        )
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
    return _as_arrays(
        {
            key: _tensor_array(value, key, path) if isinstance(value, torch.Tensor) else value
            for key, value in state.items()
        },
        path,
    )


def _tensor_array(tensor: Any, key: str, path: Path) -> np.ndarray:
    """A dense CPU ``torch.Tensor`` as a NumPy array; floating types that NumPy lacks
    (bfloat16, float8) become float32."""
    import torch

    what = f"{path}: key {key!r} of shape {tuple(tensor.shape)}"
    if tensor.layout != torch.strided:
        raise ConversionError(
            f"{what} is a {str(tensor.layout).removeprefix('torch.')} tensor; kmask converts "
            "dense tensors (save tensor.to_dense())"
        )
    if tensor.is_meta:
        raise ConversionError(f"{what} is a meta tensor: it has a shape but no values")
    if tensor.is_quantized:
        raise ConversionError(
            f"{what} is quantized ({tensor.dtype}); kmask converts floating-point weights "
            "(save tensor.dequantize())"
        )
    if tensor.is_floating_point() and tensor.dtype not in (
        torch.float16,
        torch.float32,
        torch.float64,
    ):
        tensor = tensor.float()
    try:
        return tensor.detach().cpu().numpy()
    except TypeError:  # a type NumPy has no counterpart for (complex32, ...)
        raise ConversionError(
            f"{what} has dtype {tensor.dtype}; weights must be floating point"
        ) from None


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
            data = RestrictedUnpickler(handle, str(path)).load()
    except ConversionError:
        raise
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
