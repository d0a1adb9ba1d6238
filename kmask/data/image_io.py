"""Reading image files into RGB arrays with Pillow (the Python side of the JSON reader).

Grayscale, RGBA, palette, CMYK and 16-bit images become 8-bit RGB: alpha is dropped (not
composited), 16-bit samples keep their high byte (what TensorFlow's PNG decoder does).
EXIF orientation is ignored, as COCO annotations refer to the stored pixel grid. Also
kmask's one file writer (``write_atomic``) and its check (``output_file_problem``); whole
output folders are written by ``output_folder.OutputFolder``.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile

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
    """Writes ``data`` to ``path`` as a user means it: the one file writer of kmask.

    - a regular file, or nothing yet: written under a temporary name in the same folder
      and renamed over ``path``, so a crash never leaves a half-written file;
    - a symbolic link: the same, at the file it resolves to (the link stays a link);
    - a character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe):
      written into directly, never replaced by a regular file.

    Raises:
      OSError: ``path`` is a folder, a block device or a socket (named in the message),
        or the write fails (a full disk, a read-only folder, ...).
    """
    path = os.fspath(path)
    kind = _special_kind(path)
    if kind in ("character device", "FIFO"):
        with open(path, "wb") as handle:
            handle.write(data)
        return
    if kind is not None:
        raise OSError(f"{path} is a {kind}, not a file; refusing to replace it")
    target = os.path.realpath(path)
    directory, name = os.path.split(target)
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        if os.path.exists(target):  # keep the permissions of the file it replaces
            os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def output_file_problem(path: str | os.PathLike[str] | None) -> str | None:
    """Why ``write_atomic`` could not write ``path`` (a folder, a block device or a socket,
    a missing or unwritable folder; the path is named), or None: checked before the work
    whose result the file will hold. The folder is probed by creating and removing a
    temporary file there (what the permission bits say misses ACLs, quotas, ...)."""
    if path is None:
        return None
    path = os.fspath(path)
    try:
        kind = _special_kind(path)
    except OSError as error:  # a symbolic link loop, a folder it may not search, ...
        return f"{path}: {error.strerror}"
    if kind in ("character device", "FIFO"):
        return None if os.access(path, os.W_OK) else f"{path}: the {kind} is not writable"
    if kind == "folder":
        return f"{path} is a folder, not a file"
    if kind is not None:
        return f"{path} is a {kind}, not a file"
    directory, name = os.path.split(os.path.realpath(path))
    if not os.path.isdir(directory):
        return f"{path}: the folder {directory} does not exist"
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{name}.probe-", dir=directory)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        return f"{path}: cannot write to the folder {directory} ({error.strerror})"
    return None


def _special_kind(path: str) -> str | None:
    """What ``path`` (links followed) is when it exists and is not a regular file, else
    None."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISBLK(mode):
        return "block device"
    return "socket" if stat.S_ISSOCK(mode) else "special file"
