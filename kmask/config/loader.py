"""``load_config``: experiment YAML files with ``_base_`` inheritance, and overrides.

Semantics (docs/configs.md):

- ``_base_: other.yaml`` (a path relative to the including file) or a list of them: the
  bases are read first, merged in order, then the including file over them;
- merging: mappings merge key by key, recursively; lists and scalars replace; ``null``
  replaces (``mask_head: null`` removes the base's mask head);
- ``key=value`` overrides (``kmask train --set``) are merged over the files, in order;
- every file and override is migrated from old spellings on its own first
  (``kmask.config.migration``);
- a cycle of bases or a missing base is a ``ConfigError`` naming the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kmask.config.coercion import build, to_plain
from kmask.config.config import Config
from kmask.config.migration import migrate
from kmask.config.shipped_configs import resolve_config
from kmask.config.yaml_reader import parse_override, read_yaml
from kmask.errors import ConfigError

BASE_KEY = "_base_"


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Reads an experiment YAML file (or none) and applies ``key=value`` overrides.

    Args:
      path: YAML file whose mapping (over its ``_base_`` files) overrides the schema
        defaults, or the name of a shipped config (``shapes_tiny``; ``kmask configs``
        lists them); ``None`` for defaults.
      overrides: dotted ``section.field=value`` strings, values parsed as YAML
        (``train.lr_steps=[100,200]``), applied after the file.

    Raises:
      ConfigError: naming the file, or the first override that makes the config invalid,
        and the key for unknown keys (with the closest valid key) or wrong types, or the
        files of a cycle of bases or a missing base.
      FileNotFoundError: when ``path`` is neither a file nor a shipped config's name.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = resolve_config(path)
        values = _read_with_bases(path, ())
        source = str(path)
    merged = values
    for override in overrides:
        merged = merge(merged, migrate(parse_override(override)))
    try:
        return build(Config, merged, "")
    except ConfigError as error:
        raise ConfigError(f"{_culprit(str(error), values, overrides, source)}: {error}") from None


def _culprit(error: str, values: dict[str, Any], overrides: Iterable[str], source: str) -> str:
    """What to blame for ``error`` (``"<dotted key>: ..."``): ``source`` when it is invalid
    without the overrides, else the last override at or below the key (all of them when
    none is)."""
    try:
        build(Config, values, "")
    except ConfigError:
        return source
    where = error.partition(":")[0]
    overrides = list(overrides)
    for override in reversed(overrides):
        key = override.partition("=")[0].strip()
        if key == where or key.startswith(f"{where}.") or where.startswith(f"{key}."):
            return f"override {override!r} (over {source})"
    named = ", ".join(map(repr, overrides))
    return f"override{'s' if len(overrides) > 1 else ''} {named} (over {source})"


def config_from_dict(values: Mapping[str, Any], source: str = "values") -> Config:
    """A ``Config`` from nested section values (what a YAML file holds, old spellings
    included; no ``_base_``).

    Raises:
      ConfigError: naming ``source`` and the key for unknown keys or wrong types.
    """
    try:
        return build(Config, migrate(values), "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain nested dicts (tuples become lists), ready for YAML; what
    ``config_from_dict`` and ``load_config`` read back as the same configuration."""
    return to_plain(config)


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_with_bases(path: Path, including: tuple[Path, ...]) -> dict[str, Any]:
    """The values of ``path`` merged over its bases (``including``: the files that led
    here, to name a cycle)."""
    resolved = path.resolve()
    if resolved in including:
        chain = " -> ".join(str(p) for p in (*including, resolved))
        raise ConfigError(f"{path}: a cycle of {BASE_KEY} files: {chain}")
    loaded = read_yaml(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    loaded = dict(loaded)
    bases = loaded.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: {BASE_KEY}: expected a file name or a list of them")
    values: dict[str, Any] = {}
    for name in bases:
        base = path.parent / name
        if not base.is_file():
            raise ConfigError(f"{path}: {BASE_KEY} file not found: {base}")
        values = merge(values, _read_with_bases(base, (*including, resolved)))
    try:
        return merge(values, migrate(loaded))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
