"""Builds, caches and loads the RoIAlign custom op (``Kmask>RoiAlign``, ``Kmask>RoiAlignGrad``).

The op's ABI is tied to the exact TensorFlow build, so it is compiled against the running
TensorFlow (``tf.sysconfig`` flags) by ``kmask build-ops`` or on first use, and cached in
``$KMASK_CACHE_DIR`` (default ``~/.cache/kmask``) under a key made of the TensorFlow version,
its compile flags, the Python version, the CPU build mode and a hash of the sources. A file
lock makes concurrent first uses build once; libraries are written under temporary names and
renamed, so a crash never leaves a half-written library behind.

CPU instruction sets (``KMASK_CPU_BUILD``):

- ``dispatch`` (default on x86-64): the op is compiled three times, for the x86-64 baseline,
  for AVX2 (+FMA, F16C) and for AVX-512 (F, BW, CD, DQ, VL), whatever CPU builds it; at load
  time the best variant the running CPU supports is picked from ``/proc/cpuinfo``. Nothing
  depends on the CPU that built it, so a cache shared between machines is safe. No variant
  enables AVX512-FP16 (TensorFlow 2.21's Eigen header ``PacketMathFP16.h`` does not compile
  with it under g++ 12) and none contracts multiply-adds (``-ffp-contract=off``: the sampling
  geometry must round exactly as the pure-TF twin does), so every variant gives the same
  numbers. A variant other than the baseline that fails to compile is left out and named by
  ``kmask info``.
- ``portable``: the baseline only (the default on other architectures, e.g. aarch64).
- ``native``: ``-march=native`` with the features known to break masked off; cached per CPU.

A failed build is remembered (``failed.log`` in its cache folder): no later command compiles or
waits again until ``kmask build-ops --force``, and :func:`status` carries the compiler's first
error line and the fix.

CUDA kernels are added when TensorFlow is built with CUDA and an ``nvcc`` of the same major
version is found (``$CUDA_HOME/bin``, ``PATH``, ``/usr/local/cuda*/bin``); otherwise the
libraries are CPU-only and :func:`status` says why, with both CUDA versions. Set
``KMASK_BUILD_CUDA=0`` to skip them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import functools
import glob
import hashlib
import json
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

# Private, but the only way to read the op determinism switch (TensorFlow >= 2.9).
from tensorflow.python.framework import config as framework_config

from kmask.errors import BuildError

logger = logging.getLogger(__name__)

_LIBRARY_STEM = "kmask_roi_align"
_MANIFEST = "build.json"
_FAILED = "failed.log"
_CPU_SOURCES = ("roi_align_common.h", "roi_align_op.h", "roi_align_op.cc")
_GPU_SOURCES = ("roi_align_cuda.cuh", "roi_align_op_gpu.cu.cc")
_CPU_SOURCE = "roi_align_op.cc"
_GPU_SOURCE = "roi_align_op_gpu.cu.cc"
CPU_BUILD_MODES = ("dispatch", "portable", "native")
_COMPILE_FIX = (
    "fix the compiler error and run `kmask build-ops --force`; KMASK_CPU_BUILD=portable "
    "builds without vector instructions (README.md, Troubleshooting)"
)


@dataclasses.dataclass(frozen=True)
class CpuVariant:
    """One CPU build of the op: compiler flags, and the ``/proc/cpuinfo`` flags it needs."""

    name: str
    flags: tuple[str, ...]
    requires: frozenset[str] = frozenset()


_AVX2 = CpuVariant(
    "avx2",
    ("-mavx", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt", "-mmovbe"),
    frozenset({"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe"}),
)
_AVX512 = CpuVariant(
    "avx512",
    (*_AVX2.flags, "-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl"),
    _AVX2.requires | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
)
_BASELINE = CpuVariant("baseline", ())
# CPU features whose -march=native code TensorFlow's headers do not compile, and their mask.
_BROKEN_NATIVE_FEATURES = {"avx512fp16": "-mno-avx512fp16"}


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


def source_dir() -> Path:
    """Directory of the op's sources: ``custom_ops/roi_align`` in a source checkout, else
    the copy installed inside the package as ``kmask/_csrc``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "custom_ops" / "roi_align", package / "_csrc"):
        if (candidate / _CPU_SOURCE).is_file():
            return candidate
    raise BuildError(
        f"RoIAlign sources not found next to {package}", "reinstall kmask (pip install -e .)"
    )


def cache_root() -> Path:
    """Root of the build cache: ``$KMASK_CACHE_DIR`` or ``~/.cache/kmask``."""
    return Path(os.environ.get("KMASK_CACHE_DIR", Path.home() / ".cache" / "kmask"))


def cpu_flags() -> frozenset[str]:
    """The running CPU's feature flags (``/proc/cpuinfo``; empty where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else frozenset()


def cpu_build_mode(machine: str | None = None) -> str:
    """``$KMASK_CPU_BUILD``, else ``dispatch`` on x86-64 and ``portable`` elsewhere."""
    machine = machine or platform.machine()
    mode = os.environ.get("KMASK_CPU_BUILD") or (
        "dispatch" if machine in ("x86_64", "AMD64") else "portable"
    )
    if mode not in CPU_BUILD_MODES:
        raise BuildError(
            f"KMASK_CPU_BUILD must be one of {', '.join(CPU_BUILD_MODES)}, got {mode!r}",
            "unset KMASK_CPU_BUILD or set it to dispatch, portable or native",
        )
    if mode == "dispatch" and machine not in ("x86_64", "AMD64"):
        return "portable"  # the variants are x86-64 instruction sets
    return mode


def cpu_variants(mode: str, cpu: frozenset[str]) -> tuple[CpuVariant, ...]:
    """The variants a build of ``mode`` compiles, the one every CPU runs first.

    ``cpu`` (the building CPU's flags) matters only for ``native``, whose broken features
    are masked off.
    """
    if mode == "dispatch":
        return (_BASELINE, _AVX2, _AVX512)
    if mode == "native":
        masks = tuple(flag for feature, flag in _BROKEN_NATIVE_FEATURES.items() if feature in cpu)
        return (CpuVariant("native", ("-march=native", *masks)),)
    return (_BASELINE,)


def select_variant(built: list[str], cpu: frozenset[str]) -> CpuVariant:
    """The best of the ``built`` dispatch variants that a CPU with flags ``cpu`` runs."""
    known = {variant.name: variant for variant in (_BASELINE, _AVX2, _AVX512)}
    runnable = [known[name] for name in built if name in known and known[name].requires <= cpu]
    if not runnable:  # native and portable builds hold one variant, run as it is
        return CpuVariant(built[0], ())
    return max(runnable, key=lambda variant: len(variant.requires))


def first_error_line(output: str) -> str:
    """The compiler's first error line (``file:line: error: ...``), else the first line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\berror\b", line, re.IGNORECASE) and not line.startswith("command "):
            return line
    return lines[0] if lines else "unknown error"


def _nvcc_candidates() -> list[str]:
    """Every nvcc worth asking, in order of preference."""
    candidates = []
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(str(Path(cuda_home) / "bin" / "nvcc"))
    if shutil.which("nvcc"):
        candidates.append(shutil.which("nvcc"))
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    found = []
    for candidate in candidates:
        resolved = str(Path(candidate).resolve())
        if Path(resolved).is_file() and resolved not in found:
            found.append(resolved)
    return found


def _nvcc_version(nvcc: str) -> str | None:
    result = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"release (\d+\.\d+)", result.stdout)
    return match.group(1) if match else None


@functools.cache
def cuda_plan() -> tuple[str | None, str]:
    """(nvcc path or None, reason): whether CUDA kernels will be built, and why (not), with
    TensorFlow's CUDA version and every nvcc found."""
    if not tf.test.is_built_with_cuda():
        return None, "TensorFlow is not built with CUDA"
    if os.environ.get("KMASK_BUILD_CUDA", "1") == "0":
        return None, "KMASK_BUILD_CUDA=0"
    tf_cuda = str(tf.sysconfig.get_build_info().get("cuda_version", ""))
    found = [(nvcc, _nvcc_version(nvcc) or "unknown") for nvcc in _nvcc_candidates()]
    for nvcc, version in found:
        if version.split(".")[0] == tf_cuda.split(".")[0]:
            return nvcc, f"TensorFlow CUDA {tf_cuda}, nvcc {version} ({nvcc})"
    seen = ", ".join(f"nvcc {version} ({nvcc})" for nvcc, version in found) or "no nvcc"
    return None, (
        f"TensorFlow CUDA {tf_cuda}, {seen}: CUDA {tf_cuda.split('.')[0]} nvcc needed "
        "(install that CUDA toolkit and set CUDA_HOME; PyPI's nvidia-cuda-nvcc-cu12 wheels "
        "hold ptxas only)"
    )


def _gencode(nvcc: str) -> list[str]:
    """Native code for Volta (CUDA < 13), Ampere, Ada and Hopper, plus Hopper PTX for newer
    GPUs; without these nvcc targets an old default and H100s run JIT-compiled PTX."""
    major = int((_nvcc_version(nvcc) or "12").split(".")[0])
    architectures = ([70] if major < 13 else []) + [80, 89, 90]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in architectures]
    return flags + ["-gencode=arch=compute_90,code=compute_90"]


def _cpu_fingerprint() -> str:
    """Identifies the CPU's instruction set, so a cache shared between machines never loads
    a ``native`` library built for another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def _build_key(nvcc: str | None, mode: str, variants: tuple[CpuVariant, ...]) -> str:
    digest = hashlib.sha256()
    sources = source_dir()
    for name in _CPU_SOURCES + (_GPU_SOURCES if nvcc else ()):
        digest.update(name.encode() + (sources / name).read_bytes())
    digest.update(
        " ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode()
    )
    digest.update(str(nvcc).encode())
    digest.update(repr([(variant.name, variant.flags) for variant in variants]).encode())
    if mode == "native":
        digest.update(_cpu_fingerprint().encode())
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    device = "cuda" if nvcc else "cpu"
    return f"tf{tf.__version__}-py{version}-{device}-{mode}-{digest.hexdigest()[:12]}"


def _run(command: list[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"command failed ({result.returncode}): {' '.join(command)}\n"
            f"{result.stdout}{result.stderr}",
            _COMPILE_FIX,
        )


def _compiler() -> str:
    requested = os.environ.get("CXX")
    cxx = shutil.which(requested) if requested else shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise BuildError(
            f"no C++ compiler found (CXX={requested!r})",
            "install g++ (apt-get install g++) or point CXX at a C++ compiler, then run "
            "`kmask build-ops --force`",
        )
    return cxx


def _compile_cuda(nvcc: str, workdir: Path, verbose: bool) -> list[str]:
    """Compiles the CUDA kernels; returns the linker arguments that add them."""
    sources = source_dir()
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
            *tf.sysconfig.get_compile_flags(),
        ],
        verbose,
    )
    return [str(gpu_object), f"-L{cuda_include.parent / 'lib64'}", "-lcudart"]


def _compile_cpu(
    cxx: str, output: Path, variant: CpuVariant, cuda_objects: list[str], verbose: bool
) -> None:
    # TensorFlow's flags already carry -std=c++17 and the C++ ABI flag: add no -std of ours.
    _run(
        [
            cxx,
            "-shared",
            "-O3",
            "-fPIC",
            "-ffp-contract=off",
            "-Wno-deprecated-declarations",
            "-Wno-interference-size",
            *variant.flags,
            *(["-DGOOGLE_CUDA=1"] if cuda_objects else []),
            *tf.sysconfig.get_compile_flags(),
            str(source_dir() / _CPU_SOURCE),
            *cuda_objects,
            "-o",
            str(output),
            *tf.sysconfig.get_link_flags(),
        ],
        verbose,
    )


def _library_name(variant: str) -> str:
    return f"{_LIBRARY_STEM}-{variant}.so"


def _compile_all(
    directory: Path, nvcc: str | None, variants: tuple[CpuVariant, ...], verbose: bool
) -> None:
    """Compiles every variant (in parallel) into ``directory`` and writes its manifest last.

    The first variant must build; a later one that fails is left out and named in the
    manifest's ``skipped``.
    """
    cxx = _compiler()  # no compiler: one clear error, not one per variant
    with tempfile.TemporaryDirectory(dir=directory) as workdir:
        work = Path(workdir)
        cuda_objects = _compile_cuda(nvcc, work, verbose) if nvcc else []
        workers = max(1, min(len(variants), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [
                pool.submit(
                    _compile_cpu, cxx, work / _library_name(v.name), v, cuda_objects, verbose
                )
                for v in variants
            ]
        built, skipped = [], {}
        for variant, future in zip(variants, futures):
            error = future.exception()
            if error is None:
                built.append(variant.name)
            elif variant is variants[0] or not isinstance(error, BuildError):
                raise error
            else:
                skipped[variant.name] = first_error_line(str(error).split("\n", 1)[-1])
        for name in built:
            os.replace(work / _library_name(name), directory / _library_name(name))
        manifest = {"variants": built, "skipped": skipped, "cuda": nvcc is not None}
        (work / _MANIFEST).write_text(json.dumps(manifest))
        os.replace(work / _MANIFEST, directory / _MANIFEST)


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
        return self.directory / _library_name(self.variant)

    def describe(self) -> str:
        text = f"{self.mode} (loaded {self.variant} of {', '.join(self.variants)})"
        for name, error in self.skipped.items():
            text += f"; {name} left out: {error}"
        return text


def _finished_build(mode: str, directory: Path, cpu: frozenset[str]) -> _Build:
    manifest = json.loads((directory / _MANIFEST).read_text())
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
            if not force and (directory / _MANIFEST).is_file():
                return _finished_build(mode, directory, cpu)
            if not force and failed.is_file():
                if attempt is not None:
                    continue  # this CUDA build failed before: build CPU only
                raise BuildError(
                    f"the last build failed (log: {failed}; not retried until "
                    f"`kmask build-ops --force`)\n{failed.read_text()}",
                    _COMPILE_FIX,
                )
            (directory / _MANIFEST).unlink(missing_ok=True)
            failed.unlink(missing_ok=True)
            try:
                _compile_all(directory, attempt, variants, verbose)
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
