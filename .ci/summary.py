"""One-screen summary of a `.ci/run` run, printed at its end (also when a step failed).

Usage: python .ci/summary.py REPORTS_DIR EXIT_STATUS

REPORTS_DIR holds what .ci/run wrote:

* ``steps.tsv``: one line per step that ran, ``name<TAB>exit status<TAB>seconds<TAB>tier
  limit in seconds or -<TAB>per-test timeout in seconds or -``;
* ``<tier>.xml``: pytest's --junitxml report of each test tier (``default``, ``slow``);
* ``info.txt``: the output of ``kmask info``;
* ``imports.txt``: the output of ``lint-imports`` (the import contract in pyproject.toml);
* ``sizes.txt``: the output of ``.ci/module_sizes.py``;
* ``wheel.txt``: the output of ``.ci/wheel_check.sh`` (the wheel in a fresh venv);
* ``start``: the run's start time (seconds since the epoch).

EXIT_STATUS is the status .ci/run exits with; this script only reports it. Standard library
only: it must run whatever the install step did.
"""

from __future__ import annotations

import contextlib
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

STEPS = ["install+build", "lint", "imports", "sizes", "wheel", "default", "slow"]
TIERS = {"default", "slow"}
CUDA_MODULE = "tests.ops.test_roi_align_cuda"
INFO_PREFIXES = ["  CPU build: ", "  CUDA: "]
BREACHES_SHOWN = 6
PYTEST_EXIT = {
    1: "tests failed",
    2: "interrupted",
    3: "pytest internal error",
    4: "pytest usage error",
    5: "no tests collected",
}
WIDTH = 78


def minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def read_steps(reports: Path) -> dict[str, dict]:
    steps = {}
    path = reports / "steps.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) != 5:
                continue
            name, status, seconds, limit, per_test = fields
            steps[name] = {
                "status": int(status),
                "seconds": float(seconds),
                "limit": None if limit == "-" else int(limit),
                "per_test": None if per_test == "-" else int(per_test),
            }
    return steps


def outcome(step: str, info: dict | None) -> str:
    if info is None:
        return "not run"
    status = info["status"]
    if status == 0:
        return "ok"
    if step in TIERS:
        if status in (124, 137) and info["limit"] is not None and info["limit"] < 60:
            return "FAILED: not started, budget spent"
        if status in (124, 137):
            return f"FAILED: tier limit {info['limit']}s reached"
        if status == 5 and step == "slow":
            return "ok: no tests collected (exit 5)"
        if status in PYTEST_EXIT:
            return f"FAILED: {PYTEST_EXIT[status]} (exit {status})"
    return f"FAILED (exit {status})"


def read_junit(path: Path) -> list[dict] | None:
    """The test cases of a junit report: id, result, seconds, message; None if unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases = []
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        if not name:
            continue  # the test in progress when a tier limit stopped pytest: no result
        result, message = "passed", ""
        for tag in ("error", "failure", "skipped"):
            element = case.find(tag)
            if element is not None:
                result = {"error": "errors", "failure": "failed", "skipped": "skipped"}[tag]
                message = element.get("message") or element.get("type") or ""
                break
        cases.append(
            {
                "classname": classname,
                "id": f"{classname.replace('.', '/')}.py::{name}" if classname else name,
                "result": result,
                "seconds": float(case.get("time") or 0.0),
                "message": " ".join(message.split()),
            }
        )
    return cases


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def breaches(reports: Path) -> list[str]:
    """Broken import contracts, modules over the size limit, then the contracts' imports."""
    path = reports / "imports.txt"
    imports = path.read_text().splitlines() if path.is_file() else []
    path = reports / "sizes.txt"
    sizes = path.read_text().splitlines() if path.is_file() else []
    return (
        [
            f"  broken contract: {line.removesuffix(' BROKEN')}"
            for line in imports
            if line.endswith(" BROKEN")
        ]
        + [f"  size: {line.removeprefix('OVER: ')}" for line in sizes if line.startswith("OVER: ")]
        + [f"    {line.strip()}" for line in imports if " is not allowed to import " in line]
    )


def main(reports: Path, exit_status: int) -> None:
    steps = read_steps(reports)
    junit = {tier: read_junit(reports / f"{tier}.xml") for tier in ("default", "slow")}
    lines = ["=" * WIDTH, "CI summary".center(WIDTH), "=" * WIDTH]
    header = f"{'step':<14}{'result':<36}{'wall':>7}  pass fail skip err"
    lines.append(header)
    total = 0.0
    for step in STEPS:
        info = steps.get(step)
        wall = minutes(info["seconds"]) if info else "-"
        total += info["seconds"] if info else 0.0
        row = f"{step:<14}{shorten(outcome(step, info), 35):<36}{wall:>7}"
        if step in TIERS and info is not None:
            cases = junit[step]
            if cases is None:
                row += "  (no junit report)"
            else:
                counts = Counter(case["result"] for case in cases)
                row += "".join(
                    f"{counts[key]:>5}" for key in ("passed", "failed", "skipped", "errors")
                )
        lines.append(row)
    with contextlib.suppress(OSError, ValueError):  # else the sum of the steps
        total = time.time() - int((reports / "start").read_text())
    lines.append(f"{'total':<14}{'(whole run)':<36}{minutes(total):>7}")

    limits = [
        f"{tier} {steps[tier]['per_test']}s/test, {steps[tier]['limit']}s/tier"
        for tier in ("default", "slow")
        if tier in steps and steps[tier]["per_test"] is not None
    ]
    if limits:
        lines.append("time limits: " + "; ".join(limits))
    for tier in ("default", "slow"):
        cases = junit[tier] or []
        timeouts = sum("from pytest-timeout" in case["message"] for case in cases)
        if timeouts:
            lines.append(f"{tier}: {timeouts} test(s) hit the per-test timeout")
        if cases:
            slowest = max(cases, key=lambda case: case["seconds"])
            lines.append(
                shorten(f"{tier} slowest: {slowest['seconds']:.0f}s {slowest['id']}", WIDTH)
            )

    info_path = reports / "info.txt"
    info_lines = info_path.read_text().splitlines() if info_path.is_file() else []
    lines.append("kmask info:")
    for prefix in INFO_PREFIXES:
        found = next((line for line in info_lines if line.startswith(prefix)), None)
        lines.append(found if found is not None else f"{prefix}unknown")  # as printed

    cuda = [
        case
        for tier in ("default", "slow")
        for case in junit[tier] or []
        if case["classname"] == CUDA_MODULE or case["classname"].startswith(CUDA_MODULE + ".")
    ]
    counts = Counter(case["result"] for case in cuda)
    lines.append(
        f"CUDA checks ({CUDA_MODULE.replace('.', '/')}.py, both tiers): "
        f"{counts['passed']} passed, {counts['skipped']} skipped, "
        f"{counts['failed'] + counts['errors']} failed"
    )
    reasons = Counter(case["message"] for case in cuda if case["result"] == "skipped")
    for reason, count in reasons.most_common(4):
        lines.append(shorten(f"  skipped {count}x: {reason}", WIDTH))

    found = breaches(reports)
    if found:
        lines.append("layering and module sizes:")
        lines += [shorten(line, WIDTH) for line in found[:BREACHES_SHOWN]]
        if len(found) > BREACHES_SHOWN:
            lines.append(
                f"  ... and {len(found) - BREACHES_SHOWN} more (see the imports/sizes steps)"
            )

    failed = [
        (tier, case)
        for tier in ("default", "slow")
        for case in junit[tier] or []
        if case["result"] in ("failed", "errors")
    ]
    if failed:
        lines.append(f"failed tests ({len(failed)}):")
        for tier, case in failed[:8]:
            line = f"  {tier}: {case['id']}"
            lines.append(line + shorten(f": {case['message']}", max(WIDTH - len(line), 20)))
        if len(failed) > 8:
            lines.append(f"  ... and {len(failed) - 8} more (see the pytest output above)")

    lines.append(f"reports: {reports}")
    verdict = "PASSED" if exit_status == 0 else f"FAILED (exit {exit_status})"
    lines.append(f"CI {verdict}")
    lines.append("=" * WIDTH)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
