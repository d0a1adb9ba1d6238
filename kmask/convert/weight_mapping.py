"""Source arrays consumed key by key into Keras layers, with every mismatch named."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import keras
import numpy as np

from kmask.errors import ConversionError

# PyTorch layouts -> Keras layouts.


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """``Conv2d`` [out, in / groups, kh, kw] -> Keras ``Conv2D`` [kh, kw, in / groups, out];
    also ``ConvTranspose2d`` [in, out, kh, kw] -> ``Conv2DTranspose`` [kh, kw, out, in]."""
    return np.transpose(weight, (2, 3, 1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """``Linear`` [out, in] -> ``Dense`` [in, out]."""
    return np.transpose(weight)


def nchw_dense_kernel(weight: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """A ``Linear`` after ``flatten`` of [C, H, W] features -> a ``Dense`` after an NHWC
    flatten of [H, W, C]: the input index ``c*H*W + h*W + w`` becomes ``(h*W + w)*C + c``."""
    out = weight.shape[0]
    if weight.shape[1] != channels * height * width:
        return weight.T  # let the shape check report it
    nhwc = weight.reshape(out, channels, height, width).transpose(2, 3, 1, 0)
    return nhwc.reshape(height * width * channels, out)


# PyTorch box deltas are (dx, dy, dw, dh); kmask's are (dy, dx, dh, dw).
_YX_ORDER = np.array([1, 0, 3, 2])


# The layout of a source array of each rank that the converters read.
_LAYOUTS = {1: "[channels]", 2: "[out, in]", 4: "[out, in, kh, kw]"}


def delta_rows(count: int) -> np.ndarray:
    """Indices taking ``count`` groups of (dx, dy, dw, dh) outputs to (dy, dx, dh, dw)."""
    return (np.arange(count)[:, None] * 4 + _YX_ORDER[None, :]).reshape(-1)


class WeightMapping:
    """Assigns arrays of a checkpoint to Keras layers and checks that every key is used.

    Args:
      arrays: ``{key: array}`` of the checkpoint.
      source: the file, named in every error.
      ignore: regular expressions of keys that carry no weights (e.g. BN counters).

    Raises (from the methods):
      ConversionError: a missing key, an array that is not floating point or holds NaN or
        infinite values, a shape that does not fit (naming the key, its shape, the
        converted shape and the layer's shape), or keys left unused by ``finish``.
    """

    def __init__(
        self, arrays: Mapping[str, np.ndarray], source: str, ignore: Iterable[str] = ()
    ) -> None:
        self.arrays = dict(arrays)
        self.source = source
        self.ignore = [re.compile(pattern) for pattern in ignore]
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.arrays

    def shape(self, key: str, ndim: int | None = None) -> tuple[int, ...]:
        """The shape of ``key`` (without marking it used), checked to have ``ndim`` dims."""
        if key not in self.arrays:
            raise ConversionError(f"{self.source}: missing key {key!r}")
        shape = tuple(self.arrays[key].shape)
        if ndim is not None and len(shape) != ndim:
            raise ConversionError(
                f"{self.source}: key {key!r} has shape {shape}; expected {ndim} dims "
                f"{_LAYOUTS[ndim]}"
            )
        return shape

    def take(self, key: str, ndim: int | None = None) -> np.ndarray:
        """The array of ``key`` as float32, marked as used: a floating-point array of
        ``ndim`` dims (any without ``ndim``) whose values are finite in float32."""
        if key not in self.arrays:
            near = sorted(k for k in self.arrays if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            hint = f"; keys of that module: {near}" if near else ""
            raise ConversionError(f"{self.source}: missing key {key!r}{hint}")
        array = self.arrays[key]
        if not np.issubdtype(array.dtype, np.floating):
            raise ConversionError(
                f"{self.source}: key {key!r} of shape {tuple(array.shape)} has dtype "
                f"{array.dtype}; weights must be floating point"
            )
        self.shape(key, ndim)
        with np.errstate(over="ignore"):  # float64 beyond float32's range: counted below
            value = np.asarray(array, dtype=np.float32)
        bad = value.size - np.count_nonzero(np.isfinite(value))
        if bad:
            raise ConversionError(
                f"{self.source}: key {key!r} of shape {value.shape} has {bad} NaN or infinite "
                f"value(s) in float32 (of {value.size}); refusing a corrupt checkpoint"
            )
        self.used.add(key)
        return value

    def outputs(
        self,
        layer: keras.layers.Layer,
        keys: Sequence[str],
        arrays: Sequence[np.ndarray],
        axis: int = 0,
        rows: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """``arrays`` of ``keys`` (a weight with its outputs on ``axis``, then its bias),
        checked to agree on their outputs, with only the outputs ``rows`` (all without)
        kept, in that order, for ``layer``.
        """
        weight, biases = arrays[0], arrays[1:]
        count = weight.shape[axis]
        for key, bias in zip(keys[1:], biases):
            if bias.shape != (count,):
                raise ConversionError(
                    f"{self.source}: key {key!r} of shape {bias.shape} does not fit "
                    f"{keys[0]!r} of shape {weight.shape} ({count} outputs)"
                )
        if rows is None:
            return list(arrays)
        if count <= max(rows):
            raise ConversionError(
                f"{self.source}: key {keys[0]!r} of shape {weight.shape} has {count} outputs "
                f"but kmask layer {layer.path!r} reads {len(rows)} of them (up to output "
                f"{max(rows)})"
            )
        return [np.take(weight, rows, axis=axis), *(bias[rows] for bias in biases)]

    def assign(
        self, layer: keras.layers.Layer, keys: Sequence[str], values: Sequence[np.ndarray]
    ) -> None:
        """Sets ``layer``'s weights, in ``layer.weights`` order, to ``values``: the arrays of
        ``keys`` (one per weight, named in errors), taken and converted to Keras layouts.
        """
        if len(values) != len(layer.weights):
            raise ConversionError(
                f"{self.source}: {len(values)} arrays ({list(keys)}) for the "
                f"{len(layer.weights)} weights of kmask layer {layer.path!r}"
            )
        for key, value, variable in zip(keys, values, layer.weights):
            if tuple(value.shape) != tuple(variable.shape):
                original = self.arrays[key].shape if key in self.arrays else value.shape
                raise ConversionError(
                    f"{self.source}: key {key!r} of shape {tuple(original)} "
                    f"converts to {tuple(value.shape)} but kmask weight {variable.path!r} has "
                    f"shape {tuple(variable.shape)}"
                )
        layer.set_weights(list(values))

    def finish(self) -> None:
        """Raises when keys were left unused (another architecture's checkpoint)."""
        unused = sorted(
            key
            for key in self.arrays
            if key not in self.used and not any(p.search(key) for p in self.ignore)
        )
        if unused:
            shown = ", ".join(unused[:10]) + (
                f" and {len(unused) - 10} more" if len(unused) > 10 else ""
            )
            raise ConversionError(
                f"{self.source}: {len(unused)} keys do not belong to this architecture: {shown}"
            )
