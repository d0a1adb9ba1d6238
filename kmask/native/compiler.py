"""Compiles the RoIAlign op's libraries into a folder: the compiler and ``nvcc`` lookup, the
command lines, and the folder's manifest (``build.json``).

CUDA kernels are added when TensorFlow is built with CUDA and an ``nvcc`` of the same major
version is found (``$CUDA_HOME/bin``, ``PATH``, ``/usr/local/cuda*/bin``); otherwise the
libraries are CPU-only and :func:`cuda_plan` says why, with both CUDA versions. Set
``KMASK_BUILD_CUDA=0`` to skip them.

:func:`compile_all` knows nothing of the cache: :mod:`kmask.native.custom_ops` picks the
folder, holds its lock and remembers failures.
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import tensorflow as tf

from kmask.errors import BuildError
from kmask.native.cpu_variant import CpuVariant

MANIFEST = "build.json"
CPU_SOURCES = ("roi_align_common.h", "roi_align_op.h", "roi_align_op.cc")
GPU_SOURCES = ("roi_align_cuda.cuh", "roi_align_op_gpu.cu.cc")
_LIBRARY_STEM = "kmask_roi_align"
_CPU_SOURCE = "roi_align_op.cc"
_GPU_SOURCE = "roi_align_op_gpu.cu.cc"
COMPILE_FIX = (
    "fix the compiler error and run `kmask build-ops --force`; KMASK_CPU_BUILD=portable "
    "builds without vector instructions (README.md, Troubleshooting)"
)


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


def library_name(variant: str) -> str:
    """File name of the library of one CPU variant (``kmask_roi_align-avx2.so``)."""
    return f"{_LIBRARY_STEM}-{variant}.so"


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


def _run(command: list[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"command failed ({result.returncode}): {' '.join(command)}\n"
            f"{result.stdout}{result.stderr}",
            COMPILE_FIX,
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


def compile_all(
    directory: Path, nvcc: str | None, variants: tuple[CpuVariant, ...], verbose: bool
) -> None:
    """Compiles every variant (in parallel) into ``directory`` and writes its manifest last.

    The manifest (``build.json``) holds ``variants`` (the names built), ``skipped`` (name ->
    the compiler's first error line) and ``cuda``. The first variant must build; a later one
    that fails is left out and named in ``skipped``. Raises BuildError when the first variant
    or the CUDA kernels fail to compile.
    """
    cxx = _compiler()  # no compiler: one clear error, not one per variant
    with tempfile.TemporaryDirectory(dir=directory) as workdir:
        work = Path(workdir)
        cuda_objects = _compile_cuda(nvcc, work, verbose) if nvcc else []
        workers = max(1, min(len(variants), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [
                pool.submit(
                    _compile_cpu, cxx, work / library_name(v.name), v, cuda_objects, verbose
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
            os.replace(work / library_name(name), directory / library_name(name))
        manifest = {"variants": built, "skipped": skipped, "cuda": nvcc is not None}
        (work / MANIFEST).write_text(json.dumps(manifest))
        os.replace(work / MANIFEST, directory / MANIFEST)
