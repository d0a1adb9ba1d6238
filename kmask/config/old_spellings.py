"""kmask 0.1's spellings of config keys: ``RENAMED_KEYS``, the whole table (old dotted key
-> new dotted key), read by ``kmask.config.migration`` for files and overrides, and
``accepts_old_spellings``, the same renames for Python code that builds the sections
(``BackboneConfig(depth=101)``, ``dataclasses.replace(head, pooler_resolution=7)``,
``backbone.depth``).

- the backbone type's own fields moved under the type (``model.backbone.depth`` ->
  ``model.backbone.resnet.depth``; ``type``, ``freeze_at``, ``weights`` and
  ``out_levels`` stay at the top);
- the RoIAlign fields of every pooled head moved into its ``pooler`` section
  (``model.mask_head.pooler_resolution`` -> ``model.mask_head.pooler.resolution``);
- ``train.trainable`` (a preset name) is the alias of the one freeze knob,
  ``model.backbone.freeze_at`` (files and overrides only: its value changes too);
- ``data.mask_size`` (the side of the ground-truth masks) is ``data.gt_mask_size``, apart
  from the predicted masks' sides (``model.segment_proposals.mask_size``, the heads'
  ``2 * pooler.resolution``).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

_RESNET_FIELDS = (
    "depth",
    "norm",
    "norm_epsilon",
    "stride_in_1x1",
    "conv_bias",
    "groups",
    "width_per_group",
)
_POOLED_HEADS = ("box_head", "res5_head", "mask_head", "keypoint_head")
_POOLER_FIELDS = ("resolution", "sampling_ratio", "aligned")

RENAMED_KEYS: dict[str, str] = {
    **{f"model.backbone.{key}": f"model.backbone.resnet.{key}" for key in _RESNET_FIELDS},
    **{
        f"model.{head}.pooler_{key}": f"model.{head}.pooler.{key}"
        for head in _POOLED_HEADS
        for key in _POOLER_FIELDS
    },
    "train.trainable": "model.backbone.freeze_at",
    "data.mask_size": "data.gt_mask_size",
}


def accepts_old_spellings(
    section: str, holders: Mapping[str, str] | None = None
) -> Callable[[type], type]:
    """Class decorator for the frozen dataclass of ``section`` (``"model.backbone"``): its
    constructor (so ``dataclasses.replace`` too) also takes the 0.1 field names that
    ``RENAMED_KEYS`` renamed or moved into a sub-section of the same section, and instances
    read them as attributes, each with a ``DeprecationWarning`` naming the new key.

    ``holders``: sub-section key -> the field that holds it, where they differ
    (``{"resnet": "settings"}`` for ``BackboneConfig``).
    """
    prefix = section + "."
    renames = {
        old.removeprefix(prefix): tuple(new.removeprefix(prefix).split("."))
        for old, new in RENAMED_KEYS.items()
        if old.startswith(prefix) and new.startswith(prefix)
    }
    holders = dict(holders or {})

    def warn(cls: type, old: str) -> None:
        warnings.warn(
            f"{cls.__name__}.{old} is kmask 0.1's spelling of {prefix}{'.'.join(renames[old])}",
            DeprecationWarning,
            stacklevel=3,
        )

    def decorate(cls: type) -> type:
        init = cls.__init__
        fallback = cls.__dict__.get("__getattr__")
        defaults = {field.name: field for field in dataclasses.fields(cls)}

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            for old in [name for name in kwargs if name in renames]:
                warn(cls, old)
                if len(renames[old]) == 1:  # renamed in place
                    kwargs[renames[old][0]] = kwargs.pop(old)
                    continue
                parent, key = renames[old]
                holder = holders.get(parent, parent)
                current = kwargs.get(holder)
                if current is None:
                    field = defaults[holder]
                    has_default = field.default is not dataclasses.MISSING
                    current = field.default if has_default else field.default_factory()
                kwargs[holder] = dataclasses.replace(current, **{key: kwargs.pop(old)})
            init(self, *args, **kwargs)

        def __getattr__(self: Any, name: str) -> Any:
            if name in renames:
                warn(cls, name)
                value = self
                for key in renames[name]:
                    value = getattr(value, key)
                return value
            if fallback is not None:
                return fallback(self, name)
            raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")

        cls.__init__ = __init__
        cls.__getattr__ = __getattr__
        return cls

    return decorate
