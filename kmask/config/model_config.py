"""``ModelConfig``: the ``model`` section, and the registry of instance-head sections."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from kmask.config.backbone_config import BackboneConfig
from kmask.config.box_head_config import BoxHeadConfig
from kmask.config.fpn_config import FPNConfig
from kmask.config.input_config import InputConfig
from kmask.config.keypoint_head_config import KeypointHeadConfig
from kmask.config.mask_head_config import MaskHeadConfig
from kmask.config.pooler_config import PoolerConfig
from kmask.config.res5_head_config import Res5HeadConfig
from kmask.config.roi_heads_config import ROIHeadsConfig
from kmask.config.rpn_config import RPNConfig
from kmask.config.segment_proposals_config import SegmentProposalsConfig
from kmask.errors import ConfigError


class _HeadSection(NamedTuple):
    config_class: type
    enabled_by_default: bool


# Instance-head section name (``model.<name>``) -> its config class, in registration order.
_HEAD_SECTIONS: dict[str, _HeadSection] = {}


class _FrozenMapping(Mapping):
    """An immutable, hashable mapping that pickles and copies (``instance_heads``)."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


def _default_instance_heads() -> Mapping[str, Any]:
    return _FrozenMapping(
        {
            name: section.config_class()
            for name, section in _HEAD_SECTIONS.items()
            if section.enabled_by_default
        }
    )


def _takes_head_sections(cls: type) -> type:
    """``ModelConfig(mask_head=None)``, ``ModelConfig(keypoint_head=KeypointHeadConfig())``
    and ``dataclasses.replace(model, mask_head=None)``: a registered head's section as a
    keyword, as in YAML (and as kmask 0.1's fields), applied to ``instance_heads`` (the
    given one, else the default); ``None`` removes the head."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        sections = {name: kwargs.pop(name) for name in list(kwargs) if name in _HEAD_SECTIONS}
        if sections:
            heads = dict(kwargs.get("instance_heads") or _default_instance_heads())
            for name, section in sections.items():
                heads.pop(name, None)
                if section is not None:
                    heads[name] = section
            kwargs["instance_heads"] = heads
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@_takes_head_sections
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Mask R-CNN with ResNet-FPN. ``num_classes`` counts foreground classes only.

    Detector modes: Mask R-CNN (default); Faster R-CNN with FPN (``mask_head: null``); RPN
    only (``box_head: null`` and ``mask_head: null``, the FPN paper's proposal experiments).
    Segment proposals (``segment_proposals`` set, ``box_head`` and ``mask_head`` null): the
    FPN paper's section 6 mask proposals in place of the RPN.
    ResNet-C4 (``fpn: null`` with ``res5_head``, ``backbone.out_levels: [4]``, one RPN
    level): Mask R-CNN or Faster R-CNN whose heads share conv5 run per RoI.

    Instance heads (per-detection branches on the box head's detections: ``mask_head``,
    ``keypoint_head``, and any head registered with ``register_head_section``) are written
    ``model.<name>`` in YAML (``{}`` = the section's defaults, ``null`` = no such head) and
    held in ``instance_heads`` (name -> section, in registration order, only the heads that
    are set); ``mask_head`` and ``keypoint_head`` read them (None when absent). In Python a
    head's section is also a keyword: ``ModelConfig(num_classes=3, mask_head=None)`` is
    Faster R-CNN.
    """

    num_classes: int = 80
    input: InputConfig = InputConfig()
    backbone: BackboneConfig = BackboneConfig()
    # null for the ResNet-C4 models (backbone maps go straight to the RPN and res5_head).
    fpn: FPNConfig | None = FPNConfig()
    rpn: RPNConfig = RPNConfig()
    roi_heads: ROIHeadsConfig = ROIHeadsConfig()
    box_head: BoxHeadConfig | None = BoxHeadConfig()
    # ResNet-C4: the RoI trunk every head runs on (set with fpn: null).
    res5_head: Res5HeadConfig | None = None
    # FPN segment proposals (FPN section 6) in place of the RPN; needs box_head: null and
    # mask_head: null.
    segment_proposals: SegmentProposalsConfig | None = None
    # "auto" | "custom" | "tf": which RoIAlign kernel the model uses (see kmask.ops.roi_align).
    roi_align_implementation: str = "auto"
    # The instance heads that are set: model.<name> -> its section (mask_head by default;
    # keypoint_head: {} adds the paper's keypoint head, mask_head: null with it is the
    # paper's keypoint-only model).
    instance_heads: Mapping[str, Any] = dataclasses.field(default_factory=_default_instance_heads)

    def __post_init__(self) -> None:
        for name, section in self.instance_heads.items():
            expected = _HEAD_SECTIONS.get(name)
            if expected is None:
                raise ConfigError(
                    f"model.{name}: not a registered instance head; registered: "
                    f"{', '.join(_HEAD_SECTIONS)} (kmask.config.register_head_section)"
                )
            if not isinstance(section, expected.config_class):
                raise ConfigError(
                    f"model.{name}: expected a {expected.config_class.__name__}, got "
                    f"{type(section).__name__}"
                )
        ordered = {
            name: self.instance_heads[name]
            for name in _HEAD_SECTIONS
            if name in self.instance_heads
        }
        object.__setattr__(self, "instance_heads", _FrozenMapping(ordered))
        if self.num_classes <= 0:
            raise ConfigError("model.num_classes: expected a positive integer")
        for where, section in self.sections().items():
            if isinstance(getattr(section, "pooler", None), PoolerConfig):
                section.pooler.check(f"model.{where}.pooler")
        for name in self.instance_heads:
            if self.box_head is None:
                raise ConfigError(
                    f"model.{name} needs model.box_head (instance heads run on the detected "
                    "boxes); set both to null for an RPN-only model"
                )
        if self.segment_proposals is not None and self.box_head is not None:
            raise ConfigError(
                "model.segment_proposals replaces the RPN of a proposal-only model: set "
                "model.box_head: null and model.mask_head: null"
            )
        self._check_c4()

    @property
    def mask_head(self) -> MaskHeadConfig | None:
        """``model.mask_head``, None when the model has no mask head."""
        return self.instance_heads.get("mask_head")

    @property
    def keypoint_head(self) -> KeypointHeadConfig | None:
        """``model.keypoint_head``, None when the model has no keypoint head."""
        return self.instance_heads.get("keypoint_head")

    def sections(self) -> dict[str, Any]:
        """Every section that is set, by its key under ``model`` (instance heads included)."""
        fields = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "instance_heads"
        }
        return {
            name: value
            for name, value in {**fields, **self.instance_heads}.items()
            if dataclasses.is_dataclass(value)
        }

    def _check_c4(self) -> None:
        """A ResNet-C4 model: ``res5_head`` without FPN, on the backbone's C4 alone, its
        instance heads on the conv5 maps."""
        if (self.fpn is None) != (self.res5_head is not None):
            raise ConfigError(
                "model.fpn: null and model.res5_head go together (the ResNet-C4 models); "
                f"got fpn {'null' if self.fpn is None else 'set'} and res5_head "
                f"{'null' if self.res5_head is None else 'set'}"
            )
        if self.res5_head is None:
            return
        if tuple(self.backbone.out_levels) != (4,):
            raise ConfigError(
                "model.backbone.out_levels: a ResNet-C4 model (model.res5_head) needs [4], "
                f"got {list(self.backbone.out_levels)}"
            )
        if self.box_head is None:
            raise ConfigError("model.res5_head: a ResNet-C4 model needs model.box_head")
        side = self.res5_head.output_side
        for name, head in self.instance_heads.items():
            resolution = getattr(getattr(head, "pooler", None), "resolution", side)
            if resolution != side:
                raise ConfigError(
                    f"model.{name}.pooler.resolution: the C4 instance heads run on the "
                    f"{side}x{side} maps of model.res5_head, got {resolution}"
                )


def register_head_section(name: str, config_class: type, enabled_by_default: bool = False) -> None:
    """Registers ``model.<name>`` as an instance-head section read as ``config_class``.

    ``config_class`` is a frozen dataclass: ``model.<name>: {}`` in YAML is its defaults,
    ``null`` (or leaving the key out, unless ``enabled_by_default``) means no such head.
    Register before ``load_config`` reads a file that sets the section. Registering the
    same name again with the same class is a no-op.

    Raises:
      ValueError: ``name`` is registered with another class, is a field of ``ModelConfig``,
        or ``config_class`` is not a dataclass.
    """
    if name in {field.name for field in dataclasses.fields(ModelConfig)}:
        raise ValueError(f"instance head section {name!r}: a field of ModelConfig")
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise ValueError(f"instance head section {name!r}: {config_class!r} is not a dataclass")
    registered = _HEAD_SECTIONS.get(name)
    if registered is not None:
        if registered.config_class is not config_class:
            raise ValueError(
                f"instance head section {name!r} is registered with "
                f"{registered.config_class.__name__}, not {config_class.__name__}"
            )
        return
    _HEAD_SECTIONS[name] = _HeadSection(config_class, enabled_by_default)


def head_sections() -> dict[str, type]:
    """The registered instance-head sections: ``model.<name>`` -> config class, in
    registration order."""
    return {name: section.config_class for name, section in _HEAD_SECTIONS.items()}


def head_enabled_by_default(name: str) -> bool:
    """Whether the registered instance head ``name`` is set unless the config says ``null``."""
    return _HEAD_SECTIONS[name].enabled_by_default


register_head_section("mask_head", MaskHeadConfig, enabled_by_default=True)
register_head_section("keypoint_head", KeypointHeadConfig)
