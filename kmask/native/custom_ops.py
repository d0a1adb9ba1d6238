"""Builds, caches and loads the RoIAlign custom op (``Kmask>RoiAlign``, ``Kmask>RoiAlignGrad``).

The op's ABI is tied to the exact TensorFlow build, so it is compiled against the running
TensorFlow (``tf.sysconfig`` flags) by ``kmask build-ops`` or on first use, and cached in
``$KMASK_CACHE_DIR`` (default ``~/.cache/kmask``) under a key made of the TensorFlow version,
its compile flags, the Python version, the CPU build mode and a hash of the sources. A file
lock makes concurrent first uses build once; libraries are written under temporary names and
renamed, so a crash never leaves a half-written library behind. Which CPU variants a build
holds is :mod:`kmask.native.cpu_variant`'s business; the compiler commands are
:mod:`kmask.native.compiler`'s.

A failed build is remembered (``failed.log`` in its cache folder): no later command compiles or
waits again until ``kmask build-ops --force``, and :func:`status` carries the compiler's first
error line and the fix.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import tensorflow as tf

# Private, but the only way to read the op determinism switch (TensorFlow >= 2.9).
from tensorflow.python.framework import config as framework_config

from kmask.errors import BuildError
from kmask.native.compiler import (
    COMPILE_FIX,
    CPU_SOURCES,
    GPU_SOURCES,
    MANIFEST,
    compile_all,
    cuda_plan,
    first_error_line,
    library_name,
    source_dir,
)
from kmask.native.cpu_variant import (
    CpuVariant,
    cpu_build_mode,
    cpu_fingerprint,
    cpu_flags,
    cpu_variants,
    select_variant,
)

logger = logging.getLogger(__name__)

_FAILED = "failed.log"


@dataclasses.dataclass(frozen=True)
class OpStatus:
    """What ``implementation="auto"`` picks and why (printed by ``kmask info``).

    ``cpu_build`` is the mode and the variant loaded (``"dispatch (loaded avx2 of baseline,
    avx2, avx512)"``); ``fix`` says how to get the custom op when it is unavailable.
    """

    auto_choice: str  # "custom" or "tf"
    reason: str
    library: str | None
    cpu_build: str
    cuda_built: bool
    cuda_reason: str
    fix: str | None = None


def cache_root() -> Path:
    """Root of the build cache: ``$KMASK_CACHE_DIR`` or ``~/.cache/kmask``."""
    return Path(os.environ.get("KMASK_CACHE_DIR", Path.home() / ".cache" / "kmask"))


def _build_key(nvcc: str | None, mode: str, variants: tuple[CpuVariant, ...]) -> str:
    digest = hashlib.sha256()
    sources = source_dir()
    for name in CPU_SOURCES + (GPU_SOURCES if nvcc else ()):
        digest.update(name.encode() + (sources / name).read_bytes())
    digest.update(
        " ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode()
    )
    digest.update(str(nvcc).encode())
    digest.update(repr([(variant.name, variant.flags) for variant in variants]).encode())
    if mode == "native":
        digest.update(cpu_fingerprint().encode())
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    device = "cuda" if nvcc else "cpu"
    return f"tf{tf.__version__}-py{version}-{device}-{mode}-{digest.hexdigest()[:12]}"


@dataclasses.dataclass(frozen=True)
class _Build:
    """A finished build: its folder, the library this CPU loads and the manifest."""

    mode: str
    directory: Path
    variant: str
    variants: list[str]
    skipped: dict[str, str]
    cuda: bool

    @property
    def library(self) -> Path:
        return self.directory / library_name(self.variant)

    def describe(self) -> str:
        text = f"{self.mode} (loaded {self.variant} of {', '.join(self.variants)})"
        for name, error in self.skipped.items():
            text += f"; {name} left out: {error}"
        return text


def _finished_build(mode: str, directory: Path, cpu: frozenset[str]) -> _Build:
    manifest = json.loads((directory / MANIFEST).read_text())
    variant = select_variant(manifest["variants"], cpu)
    return _Build(
        mode,
        directory,
        variant.name,
        manifest["variants"],
        manifest["skipped"],
        manifest["cuda"],
    )


def _build(force: bool, verbose: bool) -> _Build:
    mode, cpu = cpu_build_mode(), cpu_flags()
    variants = cpu_variants(mode, cpu)
    nvcc, _ = cuda_plan()
    for attempt in [nvcc, None] if nvcc else [None]:
        directory = cache_root() / "ops" / _build_key(attempt, mode, variants)
        directory.mkdir(parents=True, exist_ok=True)
        failed = directory / _FAILED
        with open(directory / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not force and (directory / MANIFEST).is_file():
                return _finished_build(mode, directory, cpu)
            if not force and failed.is_file():
                if attempt is not None:
                    continue  # this CUDA build failed before: build CPU only
                raise BuildError(
                    f"the last build failed (log: {failed}; not retried until "
                    f"`kmask build-ops --force`)\n{failed.read_text()}",
                    COMPILE_FIX,
                )
            (directory / MANIFEST).unlink(missing_ok=True)
            failed.unlink(missing_ok=True)
            try:
                compile_all(directory, attempt, variants, verbose)
            except BuildError as error:
                with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as log:
                    log.write(str(error))
                os.replace(log.name, failed)
                if attempt is None:
                    raise
                logger.warning(
                    "kmask: CUDA build of RoIAlign failed (see %s); building CPU only", failed
                )
                continue
            return _finished_build(mode, directory, cpu)
    raise AssertionError("unreachable: the CPU attempt returns or raises")


def build(force: bool = False, verbose: bool = False) -> Path:
    """Compiles the op for the running TensorFlow unless cached (or failed before); returns
    the library this CPU loads.

    Falls back to CPU-only libraries when the CUDA build fails. Raises BuildError when the
    CPU build fails, now or (without ``force``) at an earlier try with the same key.
    """
    return _build(force, verbose).library


_lock = threading.Lock()
_loaded: dict[str, object] = {}


def load() -> ModuleType | None:
    """The loaded op module (``kmask_roi_align``, ``kmask_roi_align_grad``), or None.

    Builds on first use. On failure returns None and keeps the reason and the fix for
    :func:`status`; ``kmask.ops.roi_align`` then warns once and uses the pure-TensorFlow
    implementation.
    """
    with _lock:
        if "module" not in _loaded:
            try:
                finished = _build(force=False, verbose=False)
                _loaded["module"] = tf.load_op_library(str(finished.library))
                _loaded["build"] = finished
            except BuildError as error:
                _loaded["module"] = None
                _loaded["error"] = first_error_line(str(error))
                _loaded["fix"] = error.fix
            except (OSError, tf.errors.NotFoundError) as error:
                _loaded["module"] = None
                _loaded["error"] = first_error_line(str(error))
                _loaded["fix"] = "rebuild with `kmask build-ops --force`"
        return _loaded["module"]  # type: ignore[return-value]


def status(build: bool = True) -> OpStatus:
    """Which implementation ``"auto"`` picks and why; ``build=False`` never compiles.

    With GPUs visible, ``"auto"`` takes the pure-TensorFlow twin when the library has no
    CUDA kernels, and under op determinism (``train.deterministic``), where the custom op's
    CUDA gradient (atomicAdd) refuses to run.
    """
    _, cuda_reason = cuda_plan()
    forced = os.environ.get("KMASK_ROI_ALIGN")
    module = load() if build or "module" in _loaded else None
    finished: _Build | None = _loaded.get("build")  # type: ignore[assignment]
    cuda_built = bool(finished and finished.cuda)
    common = {
        "library": str(finished.library) if finished else None,
        "cpu_build": finished.describe() if finished else "not built",
        "cuda_built": cuda_built,
        "cuda_reason": cuda_reason,
    }
    if forced:
        return OpStatus(forced, f"forced by KMASK_ROI_ALIGN={forced}", **common)
    if module is None:
        reason = _loaded.get("error", "not built (run `kmask build-ops`)")
        fix = _loaded.get("fix", "run `kmask build-ops`")
        return OpStatus("tf", f"custom op unavailable: {reason}", **common, fix=fix)
    if tf.config.list_physical_devices("GPU"):
        if not cuda_built:
            return OpStatus(
                "tf", "GPUs are visible but the custom op has no CUDA kernels", **common
            )
        if framework_config.is_op_determinism_enabled():
            return OpStatus(
                "tf",
                "op determinism is on (train.deterministic) and GPUs are visible: the custom "
                "op's CUDA gradient sums with atomics and refuses to run",
                **common,
            )
    return OpStatus("custom", "custom op built for this TensorFlow", **common)
