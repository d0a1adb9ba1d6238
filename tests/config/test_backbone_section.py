"""The one-of backbone section: generic fields on top, the type's own under its name."""

from __future__ import annotations

import dataclasses

import pytest

from kmask.config import (
    BackboneConfig,
    ConfigError,
    ResNetConfig,
    backbone_section_class,
    config_from_dict,
    config_to_dict,
    load_config,
    register_backbone_section,
)
from kmask.config import backbone_config as backbone_config_module


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
    channels: int = 8


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(backbone_config_module, "_SECTIONS", dict(backbone_config_module._SECTIONS))


def test_resnet_section():
    config = load_config(None, ["model.backbone.resnet={depth: 101, groups: 32}"])
    backbone = config.model.backbone
    assert backbone.type == "resnet" and backbone.resnet == backbone.settings
    assert (backbone.resnet.depth, backbone.resnet.groups, backbone.resnet.norm) == (
        101,
        32,
        "frozen_bn",
    )
    assert backbone_section_class("resnet") is ResNetConfig
    written = config_to_dict(config)["model"]["backbone"]
    assert list(written) == ["type", "freeze_at", "weights", "out_levels", "resnet"]
    assert written["resnet"]["depth"] == 101
    assert backbone.layer_arguments() == {
        "freeze_at": 2,
        "weights": None,
        "out_levels": (2, 3, 4, 5),
        **dataclasses.asdict(ResNetConfig(depth=101, groups=32)),
    }
    with pytest.raises(AttributeError):
        backbone.pooling  # noqa: B018


def test_unknown_types_keys_and_values_are_named():
    with pytest.raises(ConfigError, match="model.backbone.type: unknown backbone type 'vit'"):
        load_config(None, ["model.backbone.type=vit"])
    with pytest.raises(ConfigError, match="model.backbone.resnet: unknown key.*colour"):
        load_config(None, ["model.backbone.resnet.colour=1"])
    with pytest.raises(ConfigError, match="model.backbone: unknown key.*colour"):
        load_config(None, ["model.backbone.colour=1"])
    with pytest.raises(ConfigError, match="model.backbone.freeze_at: expected an integer in"):
        load_config(None, ["model.backbone.freeze_at=6"])


def test_another_type_registers_its_section(registry):
    register_backbone_section("pooling", PoolingConfig)
    register_backbone_section("pooling", PoolingConfig)  # a no-op
    with pytest.raises(ValueError, match="already has the config section PoolingConfig"):
        register_backbone_section("pooling", ResNetConfig)
    config = load_config(None, ["model.backbone.type=pooling", "model.backbone.pooling.channels=4"])
    assert config.model.backbone.pooling == PoolingConfig(4)
    assert config.model.backbone.layer_arguments()["channels"] == 4
    assert config_from_dict(config_to_dict(config)) == config
    # A section of another type than type is refused; a null one (dropping a base's) is not.
    with pytest.raises(
        ConfigError, match="model.backbone.resnet: a section of backbone type resnet, but "
    ):
        load_config(None, ["model.backbone={type: pooling, resnet: {depth: 50}}"])
    dropped = load_config(None, ["model.backbone={type: pooling, resnet: null}"])
    assert dropped.model.backbone.settings == PoolingConfig()
    with pytest.raises(ConfigError, match="model.backbone.pooling: expected a PoolingConfig"):
        BackboneConfig(type="pooling")
