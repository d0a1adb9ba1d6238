"""Runs the ``kmask`` command in a subprocess, as a user would, for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


def run_kmask(
    *args: str, cwd: Path, timeout: float = 600, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess:
    """``kmask ARGS`` in ``cwd`` with this Python; output captured as text; ``preexec_fn``
    runs in the child before it starts (e.g. to set resource limits)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from kmask.cli import main; sys.exit(main())", *args],
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",  # tqdm's bars; not the locale's codec
        errors="replace",
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        preexec_fn=preexec_fn,
    )


def assert_ok(result: subprocess.CompletedProcess) -> str:
    """Asserts exit status 0 (showing the ends of stdout and stderr otherwise); returns
    stdout."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout
