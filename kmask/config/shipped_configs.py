"""The experiment configs that ship with kmask, by name (detectron2's model zoo style):
``kmask train --config shapes_tiny`` is ``configs/shapes_tiny.yaml``.

They live in ``configs/`` of a source checkout and, in an installed wheel, inside the
package as ``kmask/_configs`` (``setup.py`` maps the folder there, ``_base_/`` included), so
a name works from any working directory and any kind of install.
"""

from __future__ import annotations

import re
from pathlib import Path

SUFFIX = ".yaml"


def configs_dir() -> Path | None:
    """The folder of the shipped configs: ``configs/`` beside the package in a source
    checkout (an editable install), else the wheel's ``kmask/_configs``; None when neither
    exists."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "configs", package / "_configs"):
        if (candidate / "_base_").is_dir():
            return candidate
    return None


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of every shipped config (``_base_/`` parts left out), sorted."""
    folder = configs_dir()
    if folder is None:
        return {}
    return {path.stem: path for path in sorted(folder.glob(f"*{SUFFIX}"))}


def config_summary(path: Path) -> str:
    """One line on what ``path`` trains: its first comment line without the parentheses it
    closes, cut before one it leaves open or a colon."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = re.sub(r"\s*\([^()]*\)", "", line.lstrip("#").strip())
            for cut in (" (", ": "):
                text = text.split(cut, 1)[0]
            return text.rstrip(",;.:")
    return ""


def resolve_config(path: str | Path) -> Path:
    """``path`` itself when it is a file, else the shipped config of that name (``name`` or
    ``name.yaml``, no folder).

    Raises:
      FileNotFoundError: neither; the message says how to list the shipped names.
    """
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        shipped = shipped_configs().get(path.name.removesuffix(SUFFIX))
        if shipped is not None:
            return shipped
    raise FileNotFoundError(
        f"config file not found: {path} (nor a shipped config name; `kmask configs` lists them)"
    )
