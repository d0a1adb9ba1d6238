"""kmask 0.1's spellings (``RENAMED_KEYS``) read as today's, in files, overrides and Python
code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from kmask.config import (
    RENAMED_KEYS,
    ConfigError,
    KeypointHeadConfig,
    MaskHeadConfig,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"

# A value for each old key, valid and different from every default.
OLD_VALUES = {
    "depth": 101,
    "norm": "gn",
    "norm_epsilon": 1e-3,
    "stride_in_1x1": False,
    "conv_bias": False,
    "groups": 32,
    "width_per_group": 8,
    "pooler_resolution": 9,
    "pooler_sampling_ratio": 5,
    "pooler_aligned": False,
    "trainable": "4+",
    "mask_size": 56,
}
# Overrides that make the section of an old key exist.
SETUP = {
    "res5_head": [
        "model.fpn=null",
        "model.res5_head={}",
        "model.backbone.out_levels=[4]",
        "model.mask_head=null",
    ],
    "keypoint_head": ["model.keypoint_head={}"],
}


def test_the_table():
    assert RENAMED_KEYS["model.backbone.depth"] == "model.backbone.resnet.depth"
    assert RENAMED_KEYS["model.mask_head.pooler_resolution"] == "model.mask_head.pooler.resolution"
    assert RENAMED_KEYS["train.trainable"] == "model.backbone.freeze_at"
    assert RENAMED_KEYS["data.mask_size"] == "data.gt_mask_size"
    assert len(RENAMED_KEYS) == 7 + 4 * 3 + 1 + 1


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_each_old_override_sets_the_new_key(old):
    new = RENAMED_KEYS[old]
    value = OLD_VALUES[old.rsplit(".", 1)[1]]
    setup = SETUP.get(old.split(".")[1], [])
    config = load_config(None, [*setup, f"{old}={value}"])
    expected = 3 if old == "train.trainable" else value  # 4+: conv4 and conv5 train
    section = config
    for key in new.split("."):
        section = getattr(section, key)
    assert section == expected
    assert config == load_config(None, [*setup, f"{new}={expected}"])


def test_old_keys_in_a_file_and_in_a_nested_override(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        "model:\n"
        "  backbone: {depth: 101, freeze_at: 0, norm: gn}\n"
        "  box_head: {pooler_sampling_ratio: 0, fc_dim: 64}\n"
        "  mask_head: {pooler_resolution: 28}\n"
    )
    config = load_config(path, ["model.keypoint_head={pooler_aligned: false}"])
    assert (config.model.backbone.resnet.depth, config.model.backbone.resnet.norm) == (101, "gn")
    assert config.model.backbone.freeze_at == 0
    assert config.model.box_head.pooler.sampling_ratio == 0
    assert config.model.box_head.pooler.resolution == 7  # the box head's own default kept
    assert config.model.box_head.fc_dim == 64
    assert config.model.mask_head.pooler.resolution == 28
    assert config.model.keypoint_head.pooler.aligned is False


def test_sources_are_migrated_one_by_one(tmp_path):
    """A file in the old spelling and an override in the new (and the reverse) combine as
    written: the override wins."""
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  backbone: {depth: 50}\n")
    assert load_config(old, ["model.backbone.resnet.depth=101"]).model.backbone.resnet.depth == 101
    new = tmp_path / "new.yaml"
    new.write_text("model:\n  backbone: {resnet: {depth: 50}}\n")
    assert load_config(new, ["model.backbone.depth=152"]).model.backbone.resnet.depth == 152


def test_both_spellings_in_one_source_are_refused(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("model:\n  backbone: {depth: 50, resnet: {depth: 101}}\n")
    with pytest.raises(ConfigError, match="model.backbone.depth and model.backbone.resnet.depth"):
        load_config(path)


def test_trainable_alias(tmp_path):
    presets = {"heads": 5, "5+": 4, "4+": 3, "3+": 2, "all": 0}
    for preset, freeze_at in presets.items():
        config = load_config(None, [f"train.trainable={preset}"])
        assert config.model.backbone.freeze_at == freeze_at
    assert load_config(None, ["train.trainable=null"]).model.backbone.freeze_at == 2
    # In one file train.trainable wins over freeze_at, as in kmask 0.1.
    path = tmp_path / "both.yaml"
    path.write_text("model:\n  backbone: {freeze_at: 0}\ntrain: {trainable: heads}\n")
    assert load_config(path).model.backbone.freeze_at == 5
    with pytest.raises(ConfigError, match="train.trainable: expected one of heads"):
        load_config(None, ["train.trainable=2+"])


def test_a_kmask_0_1_run_config_reads_and_writes_in_the_new_spelling():
    config = load_config(LEGACY / "run" / "config.yaml")
    # The run was trained with train.trainable: heads over model.backbone.freeze_at: 0.
    assert config.model.backbone.freeze_at == 5
    assert config.model.backbone.resnet.width_per_group == 8
    written = config_to_dict(config)
    assert "trainable" not in written["train"]
    assert written["model"]["backbone"]["resnet"]["width_per_group"] == 8
    assert written["model"]["box_head"]["pooler"] == {
        "resolution": 7,
        "sampling_ratio": 2,
        "aligned": True,
    }
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(written))) == config


@pytest.mark.parametrize("old", sorted(set(RENAMED_KEYS) - {"train.trainable"}))
def test_python_code_of_0_1_builds_and_reads_the_same_sections(old):
    """``BackboneConfig(depth=101)``, ``dataclasses.replace(head, pooler_resolution=9)``,
    ``DataConfig(mask_size=56)`` and ``head.pooler_resolution`` still work, warning with the
    new key; they give the section that the old key in an override gives."""
    *path, key = old.split(".")
    setup = SETUP.get(path[-1], [])
    want, default = (
        load_config(None, [*setup, f"{old}={OLD_VALUES[key]}"]),
        load_config(None, setup),
    )
    for name in path:
        want, default = getattr(want, name), getattr(default, name)
    with pytest.warns(DeprecationWarning, match=rf"\.{key} is kmask 0\.1's spelling of "):
        built = type(default)(**{key: OLD_VALUES[key]})
    with pytest.warns(DeprecationWarning):
        replaced = dataclasses.replace(default, **{key: OLD_VALUES[key]})
    assert built == replaced == want != default
    with pytest.warns(DeprecationWarning, match=RENAMED_KEYS[old].replace(".", r"\.")):
        assert getattr(want, key) == OLD_VALUES[key]
    with pytest.raises(AttributeError, match="no attribute 'depthh'"):
        want.depthh  # noqa: B018


def test_a_head_section_is_a_model_config_keyword_as_in_0_1():
    faster = ModelConfig(num_classes=3, mask_head=None)
    assert faster == load_config(None, ["model.num_classes=3", "model.mask_head=null"]).model
    assert faster.mask_head is None and not faster.instance_heads
    keypoints = dataclasses.replace(
        load_config().model, mask_head=None, keypoint_head=KeypointHeadConfig(num_keypoints=5)
    )
    assert list(keypoints.instance_heads) == ["keypoint_head"]
    assert (
        keypoints
        == load_config(None, ["model.mask_head=null", "model.keypoint_head.num_keypoints=5"]).model
    )
    assert ModelConfig(instance_heads={}, mask_head=MaskHeadConfig()) == ModelConfig()
    with pytest.raises(ConfigError, match="model.keypoint_head: expected a KeypointHeadConfig"):
        ModelConfig(keypoint_head={})
