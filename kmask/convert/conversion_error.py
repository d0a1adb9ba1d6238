"""The error of a checkpoint that cannot be converted."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint that cannot be converted: wrong file format, a pickle naming a global
    that would run code, missing or extra keys, weights that are not floating point or not
    finite, or a shape mismatch. The message names the file, the key (or the global) and the
    shapes."""
