"""The error of a checkpoint that cannot be converted."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint does not fit the requested architecture: wrong file format, missing or
    extra keys, or a shape mismatch. The message names the file, the key and the shapes."""
