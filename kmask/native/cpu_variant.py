"""The CPU builds of the RoIAlign op: instruction-set variants, build modes, and which variant
the running CPU loads.

CPU instruction sets (``KMASK_CPU_BUILD``):

- ``dispatch`` (default on x86-64): the op is compiled three times, for the x86-64 baseline,
  for AVX2 (+FMA, F16C) and for AVX-512 (F, BW, CD, DQ, VL), whatever CPU builds it; at load
  time the best variant the running CPU supports is picked from ``/proc/cpuinfo``. Nothing
  depends on the CPU that built it, so a cache shared between machines is safe. No variant
  enables AVX512-FP16 (TensorFlow 2.21's Eigen header ``PacketMathFP16.h`` does not compile
  with it under g++ 12) and none contracts multiply-adds (``-ffp-contract=off``, set by
  :mod:`kmask.native.compiler`: the sampling geometry must round exactly as the pure-TF twin
  does), so every variant gives the same numbers. A variant other than the baseline that
  fails to compile is left out and named by ``kmask info``.
- ``portable``: the baseline only (the default on other architectures, e.g. aarch64).
- ``native``: ``-march=native`` with the features known to break masked off; cached per CPU.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from pathlib import Path

from kmask.errors import BuildError

CPU_BUILD_MODES = ("dispatch", "portable", "native")


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


def _cpuinfo_lines() -> list[str] | None:
    """The lines of ``/proc/cpuinfo``; None where it is unreadable."""
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None


def cpu_flags() -> frozenset[str]:
    """The running CPU's feature flags (``/proc/cpuinfo``; empty where unreadable)."""
    for line in _cpuinfo_lines() or []:
        match = re.match(r"(?:flags|Features)\s*:(.*)$", line)
        if match:
            return frozenset(match.group(1).split())
    return frozenset()


def cpu_fingerprint() -> str:
    """Identifies the CPU's instruction set, so a cache shared between machines never loads
    a ``native`` library built for another CPU."""
    lines = _cpuinfo_lines()
    if lines is None:
        return platform.machine() + platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


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
