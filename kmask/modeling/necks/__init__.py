"""Necks: the feature pyramid (``FPN``) on the backbone's C2..C5."""

from kmask.modeling.necks.fpn import FPN

__all__ = ["FPN"]
