"""The error raised for input data that kmask cannot or, in strict mode, will not use."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: a JSON that is not COCO, or (strict mode) a bad image or annotation.

    The message names the file and, where there is one, the image id and the key.
    """
