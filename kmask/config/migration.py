"""Old spellings of config keys: kmask 0.1's schema (run directories' ``config.yaml``,
users' files and ``--set`` overrides) read in today's.

``RENAMED_KEYS`` (``kmask.config.old_spellings``) is the whole table, old dotted key ->
new dotted key. ``train.trainable`` (a preset name) is the alias of the one freeze knob,
``model.backbone.freeze_at``: heads = 5, 5+ = 4, 4+ = 3, 3+ = 2, all = 0; ``null`` means
nothing. Given in the same file as ``freeze_at`` it wins, as it did in 0.1.

Each source (a file, each of its bases, each override) is migrated on its own before they
are merged, so a new spelling in one and an old one in another combine as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmask.config.backbone_config import TRAINABLE_PRESETS
from kmask.config.old_spellings import RENAMED_KEYS
from kmask.errors import ConfigError

# Aliases whose value changes too; they win over the new key given in the same source.
_ALIAS_VALUES = {"train.trainable": "preset"}


def _freeze_at_of_preset(value: Any) -> int:
    if value not in TRAINABLE_PRESETS:
        raise ConfigError(
            f"train.trainable: expected one of {', '.join(TRAINABLE_PRESETS)} or null, "
            f"got {value!r}"
        )
    return 5 - TRAINABLE_PRESETS[value]


def migrate(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (the nested mappings of one file or override) with every old key of
    ``RENAMED_KEYS`` moved to its new key; the input is left unchanged.

    Raises:
      ConfigError: an old and a new spelling of one key in the same source (naming both),
        or an unknown ``train.trainable`` preset.
    """
    migrated = _copy(values)
    for old, new in RENAMED_KEYS.items():
        *parents, key = old.split(".")
        mapping = _mapping_at(migrated, parents)
        if mapping is None or key not in mapping:
            continue
        value = mapping.pop(key)
        if old in _ALIAS_VALUES:
            if value is None:
                continue
            value = _freeze_at_of_preset(value)
        *new_parents, new_key = new.split(".")
        target = _make_mappings(migrated, new_parents)
        if target is None:
            continue  # model.backbone: null or the like, which the schema refuses itself
        if new_key in target and old not in _ALIAS_VALUES:
            raise ConfigError(f"{old} and {new} are both given; {old} is the old spelling of {new}")
        target[new_key] = value
    return migrated


def _copy(values: Any) -> Any:
    if isinstance(values, Mapping):
        return {key: _copy(value) for key, value in values.items()}
    return values


def _mapping_at(values: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    for key in path:
        values = values.get(key) if isinstance(values, dict) else None
    return values if isinstance(values, dict) else None


def _make_mappings(values: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    for key in path:
        if key not in values:
            values[key] = {}
        values = values[key]
        if not isinstance(values, dict):
            return None
    return values
