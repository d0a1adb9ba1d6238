"""``BackboneConfig``: the one-of backbone section (``model.backbone``) and the registry of
backbone types' own sections."""

from __future__ import annotations

import dataclasses
from typing import Any

from kmask.config.old_spellings import accepts_old_spellings
from kmask.config.resnet_config import ResNetConfig
from kmask.errors import ConfigError

# ``train.trainable`` presets (the alias of ``model.backbone.freeze_at``) -> torchvision's
# ``trainable_backbone_layers`` (how many of its layer4, layer3, layer2, layer1, conv1
# train; kmask.training.TrainablePreset). freeze_at = 5 - that number.
TRAINABLE_PRESETS = {"heads": 0, "5+": 1, "4+": 2, "3+": 3, "all": 5}

# Backbone type -> the config class of its own fields (``model.backbone.<type>``).
_SECTIONS: dict[str, type] = {}


def register_backbone_section(type_name: str, config_class: type) -> None:
    """Makes ``model.backbone.type: <type_name>`` valid, with its own fields in the section
    ``model.backbone.<type_name>`` read as ``config_class`` (a frozen dataclass whose fields
    are the backbone's constructor arguments besides the generic ``freeze_at``, ``weights``
    and ``out_levels``). The counterpart of ``kmask.modeling.backbones.register_backbone``,
    which registers the layer under the same name.

    Registering a name again with the same class is a no-op.

    Raises:
      ValueError: when ``type_name`` is taken by another class, or ``config_class`` is not
        a dataclass.
    """
    if not dataclasses.is_dataclass(config_class):
        raise ValueError(f"backbone section {type_name!r}: {config_class!r} is not a dataclass")
    if _SECTIONS.get(type_name, config_class) is not config_class:
        raise ValueError(
            f"backbone type {type_name!r} already has the config section "
            f"{_SECTIONS[type_name].__name__}, not {config_class.__name__}"
        )
    _SECTIONS[type_name] = config_class


def backbone_section_class(type_name: str) -> type:
    """The config class registered for the backbone type ``type_name``.

    Raises:
      ConfigError: naming the type and the registered ones.
    """
    if type_name not in _SECTIONS:
        raise ConfigError(
            f"model.backbone.type: unknown backbone type {type_name!r}; registered: "
            f"{', '.join(_SECTIONS)} (kmask.config.register_backbone_section)"
        )
    return _SECTIONS[type_name]


def backbone_types() -> tuple[str, ...]:
    """The registered backbone types, in registration order."""
    return tuple(_SECTIONS)


register_backbone_section("resnet", ResNetConfig)


@accepts_old_spellings("model.backbone", holders={"resnet": "settings"})
@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Backbone: ``type`` names a registered backbone, the generic fields below apply to
    every type, and the type's own fields are in the section named after it::

        backbone: {type: resnet, freeze_at: 2, resnet: {depth: 101}}

    ``settings`` holds that section (``ResNetConfig`` for ``resnet``); it reads as
    ``backbone.<type>`` too (``config.model.backbone.resnet.depth``). A section of another
    type than ``type`` is a ``ConfigError``.
    """

    type: str = "resnet"
    # The one freeze knob: stages frozen from the start, 0 = nothing, 1 = stem, 2 = stem +
    # res2 (papers' default), ..., 5 = the whole backbone (conv5 of a ResNet-C4 model, in
    # model.res5_head, included). ``train.trainable`` presets are its alias (heads = 5,
    # 5+ = 4, 4+ = 3, 3+ = 2, all = 0; kmask.config.migration).
    freeze_at: int = 2
    # Pretrained weights file of the backbone (keras.applications .h5 / .weights.h5, or a
    # backbone.npz of kmask convert-weights); None = random init.
    weights: str | None = None
    # Levels returned: (2, 3, 4, 5) for an FPN; (4,) for the ResNet-C4 models, whose conv5
    # runs per RoI in model.res5_head.
    out_levels: tuple[int, ...] = (2, 3, 4, 5)
    # The type's own fields, written model.backbone.<type> (defaults: the type's defaults).
    settings: Any = ResNetConfig()

    def __post_init__(self) -> None:
        section = backbone_section_class(self.type)
        if not isinstance(self.settings, section):
            raise ConfigError(
                f"model.backbone.{self.type}: expected a {section.__name__}, got "
                f"{type(self.settings).__name__}"
            )
        if not 0 <= self.freeze_at <= 5:
            raise ConfigError(
                f"model.backbone.freeze_at: expected an integer in [0, 5], got {self.freeze_at}"
            )

    def __getattr__(self, name: str) -> Any:
        """``backbone.<type>``: the type's section (``settings``)."""
        if name == self.__dict__.get("type"):
            return self.__dict__["settings"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def layer_arguments(self) -> dict[str, Any]:
        """The backbone layer's constructor arguments: the generic fields and the type's own
        (``build_backbone(type, **arguments)``)."""
        return {
            "freeze_at": self.freeze_at,
            "weights": self.weights,
            "out_levels": self.out_levels,
            **dataclasses.asdict(self.settings),
        }
