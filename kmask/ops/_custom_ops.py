"""Builds, caches and loads the RoIAlign custom op (``Kmask>RoiAlign``, ``Kmask>RoiAlignGrad``).

The op's ABI is tied to the exact TensorFlow build, so it is compiled against the running
TensorFlow (``tf.sysconfig`` flags) by ``kmask build-ops`` or on first use, and cached in
``$KMASK_CACHE_DIR`` (default ``~/.cache/kmask``) under a key made of the TensorFlow version,
its compile flags, the Python version and a hash of the sources. A file lock makes
concurrent first uses build once; the library is written under a temporary name and renamed,
so a crash never leaves a half-written library behind.

CUDA kernels are added when TensorFlow is built with CUDA, ``nvcc`` is found
(``$CUDA_HOME/bin`` or ``PATH``) and its major version equals TensorFlow's; otherwise the
library is CPU-only and :func:`status` says why. Set ``KMASK_BUILD_CUDA=0`` to skip them.
The CPU kernels are compiled for the host's instruction set (``-march=native``; the cache key
includes the CPU's identity); ``KMASK_NATIVE=0`` builds portable code instead.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import tensorflow as tf

logger = logging.getLogger(__name__)

_LIBRARY_NAME = "kmask_roi_align.so"
_CPU_SOURCES = ("roi_align_common.h", "roi_align_op.h", "roi_align_op.cc")
_GPU_SOURCES = ("roi_align_cuda.cuh", "roi_align_op_gpu.cu.cc")
_CPU_SOURCE = "roi_align_op.cc"
_GPU_SOURCE = "roi_align_op_gpu.cu.cc"


class BuildError(RuntimeError):
    """The custom op could not be compiled; the message carries the compiler output."""


@dataclasses.dataclass(frozen=True)
class OpStatus:
    """What ``implementation="auto"`` picks and why (printed by ``kmask info``)."""

    auto_choice: str  # "custom" or "tf"
    reason: str
    library: str | None
    cuda_built: bool
    cuda_reason: str


def source_dir() -> Path:
    """Directory of the op's sources: ``custom_ops/roi_align`` in a source checkout, else
    the copy installed inside the package as ``kmask/_csrc``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "custom_ops" / "roi_align", package / "_csrc"):
        if (candidate / _CPU_SOURCE).is_file():
            return candidate
    raise BuildError(f"RoIAlign sources not found next to {package}")


def cache_root() -> Path:
    """Root of the build cache: ``$KMASK_CACHE_DIR`` or ``~/.cache/kmask``."""
    return Path(os.environ.get("KMASK_CACHE_DIR", Path.home() / ".cache" / "kmask"))


def _nvcc() -> str | None:
    if os.environ.get("KMASK_BUILD_CUDA", "1") == "0":
        return None
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _nvcc_version(nvcc: str) -> str | None:
    result = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"release (\d+\.\d+)", result.stdout)
    return match.group(1) if match else None


@functools.cache
def cuda_plan() -> tuple[str | None, str]:
    """(nvcc path or None, reason): whether CUDA kernels will be built, and why (not)."""
    if not tf.test.is_built_with_cuda():
        return None, "TensorFlow is not built with CUDA"
    nvcc = _nvcc()
    if nvcc is None:
        return None, "nvcc not found (set CUDA_HOME) or KMASK_BUILD_CUDA=0"
    tf_cuda = str(tf.sysconfig.get_build_info().get("cuda_version", ""))
    nvcc_cuda = _nvcc_version(nvcc) or "unknown"
    if tf_cuda.split(".")[0] != nvcc_cuda.split(".")[0]:
        return None, f"TensorFlow is built with CUDA {tf_cuda} but nvcc is CUDA {nvcc_cuda}"
    return nvcc, f"CUDA {nvcc_cuda} with {nvcc}"


def _gencode(nvcc: str) -> list[str]:
    """Native code for Volta (CUDA < 13), Ampere, Ada and Hopper, plus Hopper PTX for newer
    GPUs; without these nvcc targets an old default and H100s run JIT-compiled PTX."""
    major = int((_nvcc_version(nvcc) or "12").split(".")[0])
    architectures = ([70] if major < 13 else []) + [80, 89, 90]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in architectures]
    return flags + ["-gencode=arch=compute_90,code=compute_90"]


def _native_flags() -> list[str]:
    """Vector instructions of this CPU (AVX2/AVX-512: ~1.3x forward, 2-4x backward on the
    CI machine) unless KMASK_NATIVE=0. No FMA contraction: the shared sampling geometry must
    round exactly as the pure-TF twin does."""
    if os.environ.get("KMASK_NATIVE", "1") == "0":
        return []
    return ["-march=native", "-ffp-contract=off"]


def _cpu_fingerprint() -> str:
    """Identifies the CPU's instruction set, so a cache shared between machines (a network
    home directory) never loads a -march=native library built for another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def _build_key(nvcc: str | None) -> str:
    digest = hashlib.sha256()
    sources = source_dir()
    for name in _CPU_SOURCES + (_GPU_SOURCES if nvcc else ()):
        digest.update(name.encode() + (sources / name).read_bytes())
    digest.update(
        " ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode()
    )
    digest.update(str(nvcc).encode())
    digest.update(" ".join(_native_flags()).encode())
    if _native_flags():
        digest.update(_cpu_fingerprint().encode())
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    return f"tf{tf.__version__}-py{version}-{'cuda' if nvcc else 'cpu'}-{digest.hexdigest()[:12]}"


def _run(command: list[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"command failed ({result.returncode}): {' '.join(command)}\n"
            f"{result.stdout}{result.stderr}"
        )


def _compile(output: Path, nvcc: str | None, workdir: Path, verbose: bool) -> None:
    sources = source_dir()
    requested = os.environ.get("CXX")
    cxx = shutil.which(requested) if requested else shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise BuildError(f"no C++ compiler found (CXX={os.environ.get('CXX')!r}; install g++)")
    # TensorFlow's flags already carry -std=c++17 and the C++ ABI flag: add no -std of ours.
    cflags = tf.sysconfig.get_compile_flags()
    lflags = tf.sysconfig.get_link_flags()
    common = [
        "-O3",
        "-fPIC",
        "-Wno-deprecated-declarations",
        "-Wno-interference-size",
        *_native_flags(),
    ]
    objects = []
    if nvcc is not None:
        # TF's gpu_kernel_helper.h includes third_party/gpus/cuda/include/cuda_fp16.h, which
        # the wheel does not ship: map that path to the CUDA toolkit's include directory.
        cuda_include = Path(nvcc).resolve().parents[1] / "include"
        mapped = workdir / "include" / "third_party" / "gpus" / "cuda"
        mapped.mkdir(parents=True)
        (mapped / "include").symlink_to(cuda_include)
        gpu_object = workdir / "roi_align_op_gpu.o"
        _run(
            [
                nvcc,
                "-c",
                "-x",
                "cu",
                str(sources / _GPU_SOURCE),
                "-o",
                str(gpu_object),
                "-DGOOGLE_CUDA=1",
                "--expt-relaxed-constexpr",
                "-O3",
                "-Xcompiler",
                "-fPIC",
                "-Xcompiler",
                "-Wno-deprecated-declarations",
                *_gencode(nvcc),
                f"-I{workdir / 'include'}",
                f"-I{sources}",
                *cflags,
            ],
            verbose,
        )
        objects = [str(gpu_object), f"-L{cuda_include.parent / 'lib64'}", "-lcudart"]
    _run(
        [
            cxx,
            "-shared",
            *common,
            *(["-DGOOGLE_CUDA=1"] if nvcc else []),
            *cflags,
            str(sources / _CPU_SOURCE),
            *objects,
            "-o",
            str(output),
            *lflags,
        ],
        verbose,
    )


def build(force: bool = False, verbose: bool = False) -> Path:
    """Compiles the op for the running TensorFlow unless cached; returns the library path.

    Falls back to a CPU-only library when the CUDA build fails. Raises BuildError when the
    CPU build fails.
    """
    nvcc, _ = cuda_plan()
    for attempt in [nvcc, None] if nvcc else [None]:
        directory = cache_root() / "ops" / _build_key(attempt)
        library = directory / _LIBRARY_NAME
        directory.mkdir(parents=True, exist_ok=True)
        failed = directory / "failed.log"
        with open(directory / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if library.is_file() and not force:
                return library
            if attempt is not None and failed.is_file() and not force:
                continue  # this CUDA build failed before (see failed.log); build CPU only
            with tempfile.TemporaryDirectory(dir=directory) as workdir:
                partial = Path(workdir) / _LIBRARY_NAME
                try:
                    _compile(partial, attempt, Path(workdir), verbose)
                except BuildError as error:
                    if attempt is None:
                        raise
                    failed.write_text(str(error))
                    logger.warning(
                        "kmask: CUDA build of RoIAlign failed (see %s); building CPU only", failed
                    )
                    continue
                os.replace(partial, library)
            (directory / "cuda").write_text("yes" if attempt else "no")
            return library
    raise AssertionError("unreachable: the CPU attempt returns or raises")


_lock = threading.Lock()
_loaded: dict[str, object] = {}


def load() -> ModuleType | None:
    """The loaded op module (``kmask_roi_align``, ``kmask_roi_align_grad``), or None.

    Builds on first use. On failure returns None and keeps the reason for :func:`status`;
    ``kmask.ops.roi_align`` then warns once and uses the pure-TensorFlow implementation.
    """
    with _lock:
        if "module" not in _loaded:
            try:
                library = build()
                _loaded["module"] = tf.load_op_library(str(library))
                _loaded["library"] = str(library)
                _loaded["cuda"] = (library.parent / "cuda").read_text() == "yes"
            except (BuildError, OSError, tf.errors.NotFoundError) as error:
                _loaded["module"] = None
                _loaded["error"] = str(error).strip().splitlines()[0]
        return _loaded["module"]  # type: ignore[return-value]


def status(build: bool = True) -> OpStatus:
    """Which implementation ``"auto"`` picks and why; ``build=False`` never compiles."""
    _, cuda_reason = cuda_plan()
    forced = os.environ.get("KMASK_ROI_ALIGN")
    module = load() if build or "module" in _loaded else None
    library = _loaded.get("library")
    cuda_built = bool(_loaded.get("cuda"))
    if forced:
        return OpStatus(
            forced, f"forced by KMASK_ROI_ALIGN={forced}", library, cuda_built, cuda_reason
        )
    if module is None:
        reason = _loaded.get("error", "not built (run `kmask build-ops`)")
        return OpStatus("tf", f"custom op unavailable: {reason}", None, False, cuda_reason)
    if tf.config.list_physical_devices("GPU") and not cuda_built:
        return OpStatus(
            "tf",
            "GPUs are visible but the custom op has no CUDA kernels",
            library,
            False,
            cuda_reason,
        )
    return OpStatus(
        "custom", "custom op built for this TensorFlow", library, cuda_built, cuda_reason
    )
