"""Where the training stream of a data source stands: a pass over the data and an index in it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Bits of the index inside a pass in the int64 key of a position.
_INDEX_BITS = 32


@dataclasses.dataclass(frozen=True)
class StreamPosition:
    """A position in the endless training stream of a source (``pipeline.training_stream``).

    The stream visits the data in passes; pass ``p`` reads the source's items (image
    records, or TFRecord records) in an order fixed by ``(data seed, p)``, and ``index``
    counts the items of the pass in that order, those that a reader later skips (an
    unreadable image, an image without annotations) included. Every training element
    carries the int64 ``key`` of its own position, from which its random seed is derived,
    so the stream resumed at a position continues exactly as the uninterrupted one.

    Attributes:
      pass_index: the pass, from 0 (below 2**31).
      index: the item of the pass, from 0 (below 2**32).
    """

    pass_index: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.pass_index < 2**31 or not 0 <= self.index < 2**_INDEX_BITS:
            raise ValueError(
                f"stream position out of range: pass {self.pass_index} (0 <= pass < 2**31), "
                f"index {self.index} (0 <= index < 2**{_INDEX_BITS})"
            )

    @property
    def key(self) -> int:
        """The int64 ``pass_index * 2**32 + index`` (ordered like the stream)."""
        return (self.pass_index << _INDEX_BITS) | self.index

    @classmethod
    def from_key(cls, key: int) -> StreamPosition:
        """The position of an int64 ``key`` (inverse of ``key``)."""
        return cls(int(key) >> _INDEX_BITS, int(key) & (2**_INDEX_BITS - 1))

    def to_dict(self) -> dict[str, int]:
        """``{"pass": ..., "index": ...}`` (what checkpoints store)."""
        return {"pass": self.pass_index, "index": self.index}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> StreamPosition:
        """The position of a ``to_dict`` value.

        Raises:
          ValueError: not such a dict, or out of range.
        """
        try:
            pass_index, index = value["pass"], value["index"]
        except (KeyError, TypeError):
            raise ValueError(f"not a stream position: {value!r}") from None
        if not (isinstance(pass_index, int) and isinstance(index, int)):
            raise ValueError(f"not a stream position: {value!r}")
        return cls(pass_index, index)


def make_key(pass_index: Any, index: Any) -> Any:
    """The key of ``(pass_index, index)`` (int64 tensors or ints)."""
    return pass_index * 2**_INDEX_BITS + index


# The beginning of the stream (pass 0, item 0).
STREAM_START = StreamPosition()
