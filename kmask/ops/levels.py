"""Feature-map keys of a pyramid: ``"C2".."C5"`` (backbone) and ``"P2".."P6"`` (FPN).

The number after the letter is the level: a level-``k`` map has stride ``2**k``.
"""

from __future__ import annotations

from collections.abc import Iterable


def level_of(key: str) -> int:
    """The level of a key such as ``"P3"`` (3); ``ValueError`` naming the key otherwise."""
    if len(key) < 2 or key[0] not in "CP" or not key[1:].isdigit():
        raise ValueError(f"feature keys must look like 'C2'..'C5' or 'P2'..'P6', got {key!r}")
    return int(key[1:])


def sorted_levels(keys: Iterable[str]) -> list[str]:
    """``keys`` ordered from the finest level to the coarsest."""
    return sorted(keys, key=level_of)
