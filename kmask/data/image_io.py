"""Reading image files into RGB arrays with Pillow (the Python side of the JSON reader).

Grayscale, RGBA, palette, CMYK and 16-bit images become 8-bit RGB: alpha is dropped (not
composited), 16-bit samples keep their high byte (what TensorFlow's PNG decoder does).
EXIF orientation is ignored, as COCO annotations refer to the stored pixel grid. Also
the atomic writers of files and folders (``write_atomic``, ``atomic_directory``).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# What decoding a bad file raises: truncated or corrupt data (OSError, ValueError, and
# SyntaxError for some malformed headers) and images above Pillow's pixel limit.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_rgb(data: bytes) -> tuple[np.ndarray, str | None]:
    """Decodes an encoded image to RGB.

    Args:
      data: the bytes of an image file.

    Returns:
      ``(rgb, keep_format)``: ``rgb`` uint8 ``[H, W, 3]``; ``keep_format`` is ``"jpeg"`` or
      ``"png"`` when ``data`` itself decodes to the same RGB pixels in TensorFlow
      (8-bit RGB or grayscale JPEG/PNG) and can be stored as is, else None (re-encode).

    Raises:
      OSError, ValueError, SyntaxError, Image.DecompressionBombError: the bytes are not a
        complete image (truncated or corrupt). ``SyntaxError`` is what Pillow raises for
        some malformed headers.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        mode = image.mode
        image_format = image.format
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
            rgb = np.repeat(gray[:, :, None], 3, axis=2)
        elif mode == "RGB":
            rgb = np.asarray(image, dtype=np.uint8)
        else:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    keep = None
    if image_format == "JPEG" and mode in ("RGB", "L"):
        keep = "jpeg"
    elif (
        image_format == "PNG"
        and mode in ("RGB", "L")
        and data[:8] == _PNG_SIGNATURE
        and len(data) > 24
        and data[24] == 8  # IHDR bit depth
    ):
        keep = "png"
    return np.ascontiguousarray(rgb), keep


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``[H, W]`` or ``[H, W, 3]`` array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary name in the same folder."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary sibling folder of ``path`` to write into; when the block ends
    without an error it replaces ``path`` (a folder or a file, if one exists), else it is
    removed and ``path`` is left as it was. Whether an existing ``path`` may be replaced is
    the caller's check."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    previous = out.with_name(f".old-{out.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        yield staging
        if out.exists():
            os.replace(out, previous)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if previous.is_dir():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            previous.unlink(missing_ok=True)
