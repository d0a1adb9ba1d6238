"""Building and loading the custom op: cache, lock against concurrent builds, fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from kmask.ops import _custom_ops

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=600,
    )


def test_build_is_cached_per_tensorflow_version() -> None:
    library = _custom_ops.build()
    assert library.is_file()
    assert library.parent.name.startswith(f"tf{_custom_ops.tf.__version__}-")
    assert _custom_ops.build() == library  # cache hit: same path, no rebuild
    assert not list(library.parent.glob("tmp*")), "no temporary build directory left behind"


def test_two_processes_build_once_in_a_fresh_cache(tmp_path: Path) -> None:
    code = """
        from kmask.ops import _custom_ops, roi_align
        print(_custom_ops.status().auto_choice)
        print(float(roi_align([[[[1.0]]]], [[0.0, 0.0, 1.0, 1.0]], [0], 1,
                              implementation="custom")[0, 0, 0, 0]))
    """
    env = {"KMASK_CACHE_DIR": str(tmp_path), "KMASK_BUILD_CUDA": "0"}
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
    libraries = list(tmp_path.glob("ops/*/kmask_roi_align.so"))
    assert len(libraries) == 1


def test_without_a_compiler_falls_back_to_tf_and_says_so(tmp_path: Path) -> None:
    result = run_python(
        """
        from kmask.ops import _custom_ops, roi_align
        print(_custom_ops.status().auto_choice)
        print(float(roi_align([[[[2.0]]]], [[0.0, 0.0, 1.0, 1.0]], [0], 1)[0, 0, 0, 0]))
    """,
        {"KMASK_CACHE_DIR": str(tmp_path), "CXX": "/nonexistent/c++", "KMASK_BUILD_CUDA": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tf", "2.0"]
    assert result.stderr.count("custom op unavailable") == 1, result.stderr
    assert "no C++ compiler found" in result.stderr
    assert not list(tmp_path.glob("ops/*/kmask_roi_align.so"))


def test_kmask_info_reports_versions_and_choice() -> None:
    result = run_python("from kmask.cli import main; main(['info'])", {})
    assert result.returncode == 0, result.stderr
    import keras
    import tensorflow as tf

    assert f"TensorFlow  {tf.__version__}" in result.stdout
    assert f"Keras       {keras.__version__}" in result.stdout
    assert "RoIAlign    auto -> custom" in result.stdout
    assert "CUDA kernels built:" in result.stdout
