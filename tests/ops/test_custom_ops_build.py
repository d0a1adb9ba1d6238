"""Building and loading the custom op: instruction-set variants and their selection, cache,
lock against concurrent builds, remembered failures, fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kmask.errors import BuildError
from kmask.native import cpu_variant, custom_ops
from kmask.native.compiler import first_error_line

ROOT = Path(__file__).resolve().parents[2]

# /proc/cpuinfo flags of real CPUs, trimmed to what the selection reads plus a few others.
_SSE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
_HASWELL = f"{_SSE} avx avx2 fma f16c bmi1 bmi2 abm movbe xsave"
_SKYLAKE_X = f"{_HASWELL} avx512f avx512bw avx512cd avx512dq avx512vl"
_SAPPHIRE_RAPIDS = f"{_SKYLAKE_X} avx512_bf16 avx512fp16 amx_bf16 amx_tile amx_int8"
CPUS = {
    "no AVX (x86-64 baseline)": (_SSE, "baseline"),
    "AVX only (Sandy Bridge)": (f"{_SSE} avx xsave", "baseline"),
    "AVX2 only (Haswell, Zen 2)": (_HASWELL, "avx2"),
    "AVX2 without FMA": (_HASWELL.replace(" fma", ""), "baseline"),
    "AVX-512 without FP16 (Skylake-X, Zen 4)": (_SKYLAKE_X, "avx512"),
    "AVX-512 F without VL (Knights Landing)": (_SKYLAKE_X.replace(" avx512vl", ""), "avx2"),
    "AVX-512 with FP16 and AMX (Sapphire Rapids)": (_SAPPHIRE_RAPIDS, "avx512"),
}


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=600,
    )


@pytest.mark.parametrize("cpu", CPUS, ids=list(CPUS))
def test_dispatch_picks_the_best_variant_the_cpu_runs(cpu: str) -> None:
    flags, expected = CPUS[cpu]
    variants = cpu_variant.cpu_variants("dispatch", frozenset(flags.split()))
    # The variants compiled do not depend on the building CPU; none enables AVX512-FP16,
    # whose Eigen header does not compile under g++ 12.
    assert [v.name for v in variants] == ["baseline", "avx2", "avx512"]
    assert not any("fp16" in flag and "f16c" not in flag for v in variants for flag in v.flags)
    assert not any("native" in flag for v in variants for flag in v.flags)
    chosen = cpu_variant.select_variant([v.name for v in variants], frozenset(flags.split()))
    assert chosen.name == expected
    # A variant that did not build is never picked.
    fallback = cpu_variant.select_variant(["baseline", "avx2"], frozenset(flags.split()))
    assert fallback.name == ("avx2" if expected == "avx512" else expected)


@pytest.mark.parametrize("cpu", CPUS, ids=list(CPUS))
def test_native_masks_the_features_tensorflow_headers_cannot_compile(cpu: str) -> None:
    flags, _ = CPUS[cpu]
    (variant,) = cpu_variant.cpu_variants("native", frozenset(flags.split()))
    assert variant.flags[0] == "-march=native"
    assert ("-mno-avx512fp16" in variant.flags) == ("avx512fp16" in flags.split())


def test_build_mode_defaults_and_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KMASK_CPU_BUILD", raising=False)
    assert cpu_variant.cpu_build_mode("x86_64") == "dispatch"
    assert cpu_variant.cpu_build_mode("aarch64") == "portable"
    assert cpu_variant.cpu_variants("portable", frozenset()) == (cpu_variant._BASELINE,)
    monkeypatch.setenv("KMASK_CPU_BUILD", "dispatch")
    assert cpu_variant.cpu_build_mode("aarch64") == "portable"  # x86 variants only
    monkeypatch.setenv("KMASK_CPU_BUILD", "fast")
    with pytest.raises(BuildError, match="KMASK_CPU_BUILD must be one of"):
        cpu_variant.cpu_build_mode("x86_64")


def test_first_error_line_skips_the_command_and_notes() -> None:
    output = (
        "command failed (1): c++ -shared roi_align_op.cc\n"
        "In file included from roi_align_op.cc:24:\n"
        "Eigen/src/Core/arch/AVX512/PacketMathFP16.h:740:49: error: expected initializer "
        "before '<' token\n"
        "PacketMathFP16.h:748:48: error: another\n"
    )
    assert first_error_line(output).startswith("Eigen/src/Core/arch/AVX512/Packet")
    assert first_error_line("ld: cannot find -lfoo\n") == "ld: cannot find -lfoo"


def test_the_default_build_holds_every_variant_with_its_instruction_set() -> None:
    """Whatever CPU builds it, a dispatch build compiles AVX2 and AVX-512 code (checked in
    the machine code: ymm / zmm registers) and loads the variant this CPU runs."""
    if cpu_variant.cpu_build_mode() != "dispatch":
        pytest.skip(f"KMASK_CPU_BUILD={cpu_variant.cpu_build_mode()} (not dispatch)")
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    library = custom_ops.build()
    assert library.parent.name.startswith(f"tf{custom_ops.tf.__version__}-")
    assert custom_ops.build() == library  # cache hit: same path, no rebuild
    assert not list(library.parent.glob("tmp*")), "no temporary build directory left behind"
    registers = {}
    for variant in ("baseline", "avx2", "avx512"):
        path = library.parent / f"kmask_roi_align-{variant}.so"
        code = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        registers[variant] = ("%ymm" in code, "%zmm" in code)
    assert registers == {
        "baseline": (False, False),
        "avx2": (True, False),
        "avx512": (True, True),
    }
    expected = cpu_variant.select_variant(["baseline", "avx2", "avx512"], cpu_variant.cpu_flags())
    assert library.name == f"kmask_roi_align-{expected.name}.so"


_FORWARD_AND_GRADIENT = """
    import numpy as np, tensorflow as tf
    from kmask.native import custom_ops
    from kmask.ops import roi_align
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(2, 23, 31, 37)).astype(np.float32))
    boxes = tf.constant(rng.uniform(-4, 30, size=(40, 4)).astype(np.float32))
    indices = tf.constant(rng.integers(0, 2, 40).astype(np.int32))
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = roi_align(features, boxes, indices, 7, implementation="custom")
        loss = tf.reduce_sum(out * tf.cos(out))
    grad = tape.gradient(loss, features)
    np.savez(OUT, out=out.numpy(), grad=grad.numpy())
    print(custom_ops.status().cpu_build)
"""


def test_portable_and_dispatched_variants_give_the_same_bits(tmp_path: Path) -> None:
    """The vector variant this CPU loads and the baseline round identically (no FMA
    contraction, per-channel accumulation order unchanged by the vector width)."""
    results = {}
    for mode in ("portable", "dispatch"):
        out = tmp_path / f"{mode}.npz"
        result = run_python(
            _FORWARD_AND_GRADIENT.replace("OUT", repr(str(out))), {"KMASK_CPU_BUILD": mode}
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(mode), result.stdout
        results[mode] = np.load(out)
    assert np.array_equal(results["portable"]["out"], results["dispatch"]["out"])
    assert np.array_equal(results["portable"]["grad"], results["dispatch"]["grad"])
    assert np.abs(results["dispatch"]["grad"]).max() > 0


def test_two_processes_build_once_in_a_fresh_cache(tmp_path: Path) -> None:
    code = """
        from kmask.native import custom_ops
        from kmask.ops import roi_align
        print(custom_ops.status().auto_choice)
        print(float(roi_align([[[[1.0]]]], [[0.0, 0.0, 1.0, 1.0]], [0], 1,
                              implementation="custom")[0, 0, 0, 0]))
    """
    env = {"KMASK_CACHE_DIR": str(tmp_path), "KMASK_BUILD_CUDA": "0", "KMASK_CPU_BUILD": "portable"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        assert stdout.split() == ["custom", "1.0"]
    libraries = list(tmp_path.glob("ops/*/kmask_roi_align-*.so"))
    assert [library.name for library in libraries] == ["kmask_roi_align-baseline.so"]


def test_without_a_compiler_falls_back_to_tf_and_says_so_once(tmp_path: Path) -> None:
    result = run_python(
        """
        from kmask.native import custom_ops
        from kmask.ops import roi_align
        print(custom_ops.status().auto_choice)
        print(float(roi_align([[[[2.0]]]], [[0.0, 0.0, 1.0, 1.0]], [0], 1)[0, 0, 0, 0]))
        print(float(roi_align([[[[3.0]]]], [[0.0, 0.0, 1.0, 1.0]], [0], 1)[0, 0, 0, 0]))
    """,
        {"KMASK_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/c++", "KMASK_BUILD_CUDA": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tf", "2.0", "3.0"]
    (line,) = [line for line in result.stderr.splitlines() if "custom op unavailable" in line]
    assert "no C++ compiler found" in line and "fix: install g++" in line
    assert not list(tmp_path.glob("ops/*/kmask_roi_align*.so"))


def test_a_failed_build_is_remembered_until_forced(tmp_path: Path) -> None:
    """A compiler error is compiled once: later processes (kmask info, first use) read the
    cached failure without running the compiler; ``build-ops --force`` retries."""
    calls = tmp_path / "calls"
    compiler = tmp_path / "broken-c++"
    compiler.write_text(
        f"#!/bin/sh\necho x >> {calls}\n"
        'echo "In file included from roi_align_op.cc:24:" >&2\n'
        "echo \"PacketMathFP16.h:740:49: error: expected initializer before '<' token\" >&2\n"
        "exit 1\n"
    )
    compiler.chmod(0o755)
    env = {
        "KMASK_CACHE_DIR": str(tmp_path / "cache"),
        "CXX": str(compiler),
        "KMASK_BUILD_CUDA": "0",
        "KMASK_CPU_BUILD": "portable",
    }
    cli = "from kmask.cli import main; raise SystemExit(main({args}))"

    build = run_python(cli.format(args="['build-ops']"), env)
    assert build.returncode == 1
    assert "kmask build-ops: error: PacketMathFP16.h:740:49: error: expected" in build.stderr
    assert "fix: fix the compiler error" in build.stderr
    assert calls.read_text().count("x") == 1

    info = run_python(cli.format(args="['info']"), env)
    assert info.returncode == 0, info.stderr
    assert "RoIAlign    auto -> tf: custom op unavailable: PacketMathFP16.h:740:49: error" in (
        info.stdout
    )
    assert "  fix: fix the compiler error and run `kmask build-ops --force`" in info.stdout
    use = run_python(
        "from kmask.ops.roi_align import resolve_implementation as r; print(r('auto'))", env
    )
    assert use.stdout.split() == ["tf"], use.stderr
    assert use.stderr.count("custom op unavailable") == 1
    assert calls.read_text().count("x") == 1, "a remembered failure must not recompile"

    forced = run_python(cli.format(args="['build-ops', '--force']"), env)
    assert forced.returncode == 1
    assert calls.read_text().count("x") == 2


def test_kmask_info_reports_versions_choice_build_and_cuda() -> None:
    result = run_python("from kmask.cli import main; main(['info'])", {})
    assert result.returncode == 0, result.stderr
    import keras
    import tensorflow as tf

    assert f"TensorFlow  {tf.__version__}" in result.stdout
    assert f"Keras       {keras.__version__}" in result.stdout
    assert "RoIAlign    auto -> custom" in result.stdout
    assert f"  CPU build: {cpu_variant.cpu_build_mode()} (loaded " in result.stdout
    cuda = [line for line in result.stdout.splitlines() if line.startswith("  CUDA: kernels ")]
    assert len(cuda) == 1
    if tf.test.is_built_with_cuda():
        tf_cuda = tf.sysconfig.get_build_info()["cuda_version"]
        assert f"TensorFlow CUDA {tf_cuda}" in cuda[0]
