"""The instance-head section registry: ``model.<name>`` for registered heads in YAML,
overrides, ``instance_heads`` and ``config_to_dict``; checks written once for all heads."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import yaml

from kmask.config import (
    ConfigError,
    KeypointHeadConfig,
    MaskHeadConfig,
    ModelConfig,
    PoolerConfig,
    config_from_dict,
    config_to_dict,
    head_sections,
    load_config,
    register_head_section,
)
from kmask.config import model_config as model_config_module


@dataclasses.dataclass(frozen=True)
class AspectHeadConfig:
    """A per-RoI regressor's section, as a user's module would declare it."""

    fc_dim: int = 16
    pooler: PoolerConfig = PoolerConfig(7)


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by a test are undone after it."""
    sections = dict(model_config_module._HEAD_SECTIONS)
    monkeypatch.setattr(model_config_module, "_HEAD_SECTIONS", sections)


def test_builtin_heads():
    # First, whatever heads other test modules registered after them (the outside head).
    assert list(head_sections())[:2] == ["mask_head", "keypoint_head"]
    assert head_sections()["mask_head"] is MaskHeadConfig
    default = load_config().model
    assert list(default.instance_heads) == ["mask_head"]  # mask on, keypoints off by default
    assert default.mask_head == MaskHeadConfig() and default.keypoint_head is None
    both = load_config(None, ["model.keypoint_head={}", "model.mask_head.num_conv=2"]).model
    assert list(both.instance_heads) == ["mask_head", "keypoint_head"]
    assert both.keypoint_head == KeypointHeadConfig() and both.mask_head.num_conv == 2
    with pytest.raises(TypeError):
        both.instance_heads["mask_head"] = None  # immutable


def test_a_registered_head_is_a_model_section(registry):
    with pytest.raises(ConfigError, match="unknown key.*aspect_head"):
        load_config(None, ["model.aspect_head={}"])
    register_head_section("aspect_head", AspectHeadConfig)
    register_head_section("aspect_head", AspectHeadConfig)  # again, same class: a no-op
    sections = list(head_sections())  # after the built-ins and heads other modules registered
    assert sections[:2] == ["mask_head", "keypoint_head"] and sections[-1] == "aspect_head"
    assert "aspect_head" not in load_config().model.instance_heads  # off by default
    config = load_config(None, ["model.aspect_head={}", "model.aspect_head.fc_dim=4"])
    assert config.model.instance_heads["aspect_head"] == AspectHeadConfig(fc_dim=4)
    assert list(config.model.instance_heads) == ["mask_head", "aspect_head"]
    assert load_config(None, ["model.aspect_head=null"]).model.instance_heads.keys() == {
        "mask_head"
    }
    written = config_to_dict(config)["model"]
    assert written["aspect_head"] == {
        "fc_dim": 4,
        "pooler": {"resolution": 7, "sampling_ratio": 0, "aligned": True},
    }
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))) == config
    with pytest.raises(ConfigError, match="model.aspect_head.pooler.resolution: expected"):
        load_config(None, ["model.aspect_head.pooler.resolution=0"])  # its pooler is checked
    with pytest.raises(ConfigError, match="model.aspect_head needs model.box_head"):
        load_config(None, ["model.aspect_head={}", "model.mask_head=null", "model.box_head=null"])


def test_registration_conflicts(registry):
    with pytest.raises(ValueError, match="registered with MaskHeadConfig, not AspectHeadConfig"):
        register_head_section("mask_head", AspectHeadConfig)
    with pytest.raises(ValueError, match="a field of ModelConfig"):
        register_head_section("box_head", AspectHeadConfig)
    with pytest.raises(ValueError, match="not a dataclass"):
        register_head_section("aspect_head", dict)


def test_a_head_on_by_default(registry):
    register_head_section("aspect_head", AspectHeadConfig, enabled_by_default=True)
    config = load_config()
    assert config.model.instance_heads["aspect_head"] == AspectHeadConfig()
    assert ModelConfig().instance_heads.keys() == {"mask_head", "aspect_head"}
    off = load_config(None, ["model.aspect_head=null"])
    assert config_to_dict(off)["model"]["aspect_head"] is None  # written, so it stays off
    assert config_from_dict(config_to_dict(off)) == off


def test_absent_heads_in_written_configs():
    """An absent head that is on by default is written null; one off by default is left
    out (so a run's config.yaml loads without the module of an unused head)."""
    written = config_to_dict(load_config(None, ["model.mask_head=null"]))["model"]
    assert written["mask_head"] is None and "keypoint_head" not in written
    keys = list(config_to_dict(load_config(None, ["model.keypoint_head={}"]))["model"])
    assert keys.index("box_head") + 1 == keys.index("mask_head")  # as kmask 0.1 wrote them
    assert keys.index("mask_head") + 1 == keys.index("keypoint_head")


def test_model_config_in_python():
    config = ModelConfig(
        instance_heads={"keypoint_head": KeypointHeadConfig(), "mask_head": MaskHeadConfig()}
    )
    assert list(config.instance_heads) == ["mask_head", "keypoint_head"]  # registration order
    assert dataclasses.replace(config, instance_heads={}).mask_head is None
    with pytest.raises(ConfigError, match="model.mask_head: expected a MaskHeadConfig"):
        ModelConfig(instance_heads={"mask_head": KeypointHeadConfig()})
    with pytest.raises(ConfigError, match="model.aspect_head: not a registered instance head"):
        ModelConfig(instance_heads={"aspect_head": AspectHeadConfig()})
    same = ModelConfig(
        instance_heads={"mask_head": MaskHeadConfig(), "keypoint_head": KeypointHeadConfig()}
    )
    assert same == config and hash(same) == hash(config)
    assert pickle.loads(pickle.dumps(config)) == config == copy.deepcopy(config)
