""".ci/module_sizes.py (the module-size limit) and how .ci/summary.py reports it and the
import contract (lint-imports)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

CI = Path(__file__).resolve().parents[1] / ".ci"


def ci_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, CI / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_module(path: Path, lines: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"x{i} = {i}\n" for i in range(lines)))


def test_module_sizes_flags_large_modules_and_stale_allowances(tmp_path: Path) -> None:
    sizes = ci_script("module_sizes")
    package = tmp_path / "pkg"
    write_module(package / "small.py", sizes.LIMIT)
    write_module(package / "sub" / "large.py", sizes.LIMIT + 1)
    write_module(package / "sub" / "allowed.py", sizes.LIMIT + 7)
    counts = sizes.line_counts(package)
    assert counts == {
        "pkg/small.py": sizes.LIMIT,
        "pkg/sub/allowed.py": sizes.LIMIT + 7,
        "pkg/sub/large.py": sizes.LIMIT + 1,
    }
    allowed = {"pkg/sub/allowed.py": "a reason", "pkg/small.py": "stale", "pkg/gone.py": "old"}
    assert sizes.breaches(counts, allowed) == [
        f"pkg/sub/large.py {sizes.LIMIT + 1} lines",
        "pkg/small.py in ALLOWED but not over the limit",
        "pkg/gone.py in ALLOWED but gone",
    ]
    assert sizes.breaches(counts, {"pkg/sub/large.py": "r", "pkg/sub/allowed.py": "r"}) == []


def test_module_sizes_exit_status(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    write_module(package / "a.py", 3)
    run = [sys.executable, str(CI / "module_sizes.py"), str(package)]
    ok = subprocess.run(run, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout
    assert "largest: pkg/a.py 3" in ok.stdout
    write_module(package / "b.py", 501)
    over = subprocess.run(run, capture_output=True, text=True, check=False)
    assert over.returncode == 1
    assert "OVER: pkg/b.py 501 lines" in over.stdout


def test_summary_lists_broken_contracts_and_large_modules(tmp_path: Path) -> None:
    summary = ci_script("summary")
    (tmp_path / "steps.tsv").write_text(
        "lint\t0\t3\t-\t-\nimports\t1\t1\t-\t-\nsizes\t1\t0\t-\t-\n"
    )
    (tmp_path / "imports.txt").write_text(
        "layers BROKEN\nacyclic KEPT\n\nContracts: 1 kept, 1 broken.\n\n"
        "kmask.runs is not allowed to import kmask.training:\n\n"
        "- kmask.runs.run_directory -> kmask.training.checkpoint_callback (l.134)\n"
    )
    (tmp_path / "sizes.txt").write_text(
        "largest: kmask/cli.py 1000\nOVER: kmask/cli.py 1000 lines\n"
    )
    assert summary.breaches(tmp_path) == [
        "  broken contract: layers",
        "  size: kmask/cli.py 1000 lines",
        "    kmask.runs is not allowed to import kmask.training:",
    ]
    result = subprocess.run(
        [sys.executable, str(CI / "summary.py"), str(tmp_path), "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "FAILED (exit 1)" in rows["imports"] and "FAILED (exit 1)" in rows["sizes"]
    assert "ok" in rows["lint"]
    assert "  broken contract: layers" in result.stdout
    assert "CI FAILED (exit 1)" in result.stdout
