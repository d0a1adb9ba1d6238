"""An unpickler that builds the NumPy arrays of a checkpoint and calls nothing else."""

from __future__ import annotations

import collections
import pickle
from typing import IO, Any

import numpy as np

from kmask.errors import ConversionError


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it to store ``bytes`` (array data):
    latin-1 only."""
    if encoding != "latin1":
        raise ValueError(f"_codecs.encode with encoding {encoding!r}; pickles use 'latin1'")
    return text.encode("latin1")


# The callables NumPy's pickles name, taken from the installed NumPy whichever of its
# module paths a file names: numpy 1.x wrote numpy.core.*, numpy 2.x writes numpy._core.*.
_NUMPY_FUNCTIONS = {
    ("multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],  # ndarray (protocol <= 4)
    ("multiarray", "scalar"): np.float32(0).__reduce__()[0],  # NumPy scalars
    ("numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],  # ndarray (protocol 5)
}
_ALLOWED: dict[tuple[str, str], Any] = {
    **{
        (f"{package}.{module}", name): function
        for package in ("numpy.core", "numpy._core")
        for (module, name), function in _NUMPY_FUNCTIONS.items()
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Reads a pickle of NumPy arrays and plain data, refusing anything that runs code.

    A pickle runs code by design: it names globals (``module.name``), which the loader
    imports and calls, so ``pickle.load`` of a crafted file runs ``os.system`` or any other
    function. Every global passes through ``find_class``; this one answers only for what a
    detectron2 / Caffe2 ``.pkl`` holds (``{"model": {name: ndarray}, ...}``): NumPy arrays
    (``numpy.ndarray``, ``numpy.dtype``, ``multiarray._reconstruct``,
    ``numeric._frombuffer``), NumPy scalars (``multiarray.scalar``), under numpy 1.x's
    ``numpy.core`` or 2.x's ``numpy._core`` names, ``collections.OrderedDict`` and the
    latin-1 ``_codecs.encode`` of protocol 0-2 ``bytes``. Dicts, lists, tuples, str, bytes,
    int, float, bool and None have opcodes of their own. Any other global is refused when
    it is named, before anything in the file is called. Strings of Python 2 pickles are
    decoded as latin-1, as detectron2 does.

    Args:
      file: the pickle, opened for reading in binary mode.
      source: the file's name, for errors.

    Raises (from ``load``):
      ConversionError: naming ``source`` and the refused global ``module.name``.
    """

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object named ``module.name``; refuses every other global."""
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise ConversionError(
                f"{self.source}: refused to load global {module}.{name}: a detectron2 .pkl "
                "holds only NumPy arrays and plain containers, and loading this one would "
                "call that function"
            )
        return allowed
