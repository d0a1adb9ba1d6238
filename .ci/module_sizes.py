"""Module sizes of kmask/: no module over LIMIT lines unless ALLOWED says why.

Usage: python .ci/module_sizes.py [PACKAGE_DIR]   (default: kmask/ next to .ci/)

Prints the largest modules and every breach, and exits 1 when a module over the limit is not
in ALLOWED, or when an ALLOWED entry is stale (its module is gone or back under the limit:
the list only ever names what is over it today). .ci/run runs it; its output goes to the CI
summary. Standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 500
# Path relative to the package's parent (``kmask/...``) -> why it may stay over LIMIT.
ALLOWED: dict[str, str] = {}
SHOWN = 5


def line_counts(package: Path) -> dict[str, int]:
    """Lines of every module below ``package``, keyed by path relative to its parent."""
    return {
        path.relative_to(package.parent).as_posix(): len(path.read_bytes().splitlines())
        for path in sorted(package.rglob("*.py"))
    }


def breaches(counts: dict[str, int], allowed: dict[str, str]) -> list[str]:
    """One line per module over LIMIT that ALLOWED does not name, and per stale entry."""
    problems = [
        f"{path} {lines} lines"
        for path, lines in counts.items()
        if lines > LIMIT and path not in allowed
    ]
    problems += [
        f"{path} in ALLOWED but {'gone' if path not in counts else 'not over the limit'}"
        for path in allowed
        if counts.get(path, 0) <= LIMIT
    ]
    return problems


def main(package: Path) -> int:
    counts = line_counts(package)
    largest = sorted(counts.items(), key=lambda item: -item[1])[:SHOWN]
    print(f"module sizes: {len(counts)} modules in {package.name}/, limit {LIMIT} lines")
    print("largest: " + ", ".join(f"{path} {lines}" for path, lines in largest))
    for path, reason in ALLOWED.items():
        if counts.get(path, 0) > LIMIT:
            print(f"allowed: {path} {counts[path]} lines: {reason}")
    problems = breaches(counts, ALLOWED)
    for problem in problems:
        print(f"OVER: {problem}")
    if problems:
        print(
            "split each module over the limit along a real seam, or add it to ALLOWED in "
            ".ci/module_sizes.py with the reason; remove stale ALLOWED entries"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    default = Path(__file__).resolve().parent.parent / "kmask"
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
