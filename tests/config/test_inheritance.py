"""``_base_`` inheritance: merge semantics, precedence, relative paths, cycles, missing
files; every shipped config resolves through its bases."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmask.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def base(tmp_path) -> Path:
    return _write(
        tmp_path / "bases" / "base.yaml",
        "model:\n"
        "  num_classes: 5\n"
        "  rpn: {anchor_aspect_ratios: [0.5, 1.0, 2.0], nms_threshold: 0.6}\n"
        "  keypoint_head: {num_keypoints: 3}\n"
        "train: {max_steps: 100, lr_steps: [50, 80], seed: 3}\n",
    )


def test_mappings_merge_lists_and_scalars_replace_null_removes(tmp_path, base):
    child = _write(
        tmp_path / "child.yaml",
        "_base_: bases/base.yaml\n"
        "model:\n"
        "  rpn: {anchor_aspect_ratios: [1.0]}\n"
        "  keypoint_head: null\n"
        "train: {max_steps: 200}\n",
    )
    config = load_config(child)
    assert config.model.num_classes == 5  # untouched keys come from the base
    assert config.model.rpn.anchor_aspect_ratios == (1.0,)  # a list replaces, not appends
    assert config.model.rpn.nms_threshold == 0.6  # the mapping merged key by key
    assert config.model.keypoint_head is None and "keypoint_head" not in config.model.instance_heads
    assert (config.train.max_steps, config.train.lr_steps, config.train.seed) == (200, (50, 80), 3)


def test_overrides_win_over_files_and_later_bases_over_earlier(tmp_path, base):
    _write(tmp_path / "bases" / "other.yaml", "train: {seed: 7, warmup_steps: 5}\n")
    child = _write(
        tmp_path / "child.yaml",
        "_base_: [bases/base.yaml, bases/other.yaml]\ntrain: {warmup_steps: 6}\n",
    )
    config = load_config(child, ["train.max_steps=300", "model.keypoint_head.num_keypoints=4"])
    assert (config.train.seed, config.train.warmup_steps) == (7, 6)
    assert config.train.max_steps == 300 and config.model.keypoint_head.num_keypoints == 4


def test_bases_are_relative_to_the_including_file(tmp_path, base):
    _write(tmp_path / "bases" / "middle.yaml", "_base_: base.yaml\ntrain: {seed: 9}\n")
    child = _write(tmp_path / "deep" / "er" / "child.yaml", "_base_: ../../bases/middle.yaml\n")
    config = load_config(child)
    assert (config.model.num_classes, config.train.seed) == (5, 9)


def test_a_cycle_names_the_files(tmp_path):
    a = _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    b = _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as error:
        load_config(a)
    assert str(a.resolve()) in str(error.value) and str(b.resolve()) in str(error.value)
    self_cycle = _write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(self_cycle)


def test_a_missing_base_names_both_files(tmp_path):
    child = _write(tmp_path / "child.yaml", "_base_: [nowhere.yaml]\n")
    with pytest.raises(ConfigError, match=f"{child}: _base_ file not found: .*nowhere.yaml"):
        load_config(child)
    bad = _write(tmp_path / "bad.yaml", "_base_: {a: 1}\n")
    with pytest.raises(ConfigError, match="_base_: expected a file name or a list"):
        load_config(bad)


def test_a_base_used_twice_is_not_a_cycle(tmp_path, base):
    _write(tmp_path / "bases" / "left.yaml", "_base_: base.yaml\ntrain: {seed: 1}\n")
    _write(tmp_path / "bases" / "right.yaml", "_base_: base.yaml\n")
    child = _write(tmp_path / "child.yaml", "_base_: [bases/left.yaml, bases/right.yaml]\n")
    assert load_config(child).train.seed == 3  # right's base.yaml comes after left's seed


def test_errors_in_a_base_name_the_base(tmp_path):
    _write(tmp_path / "base.yaml", "train: [1, 2\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml:2: invalid YAML"):
        load_config(child)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_resolve(name):
    config = load_config(CONFIGS / name)
    assert config.train.max_steps > max(config.train.lr_steps)


def test_derived_configs_state_only_their_differences():
    """faster = mask minus the mask head; the detectron2 C4 head differs from the paper's
    C4 config in its RoI trunk, RPN test proposals and RoI batch only."""
    mask = load_config(CONFIGS / "mask_rcnn_r50_fpn_1x_coco.yaml")
    faster = load_config(CONFIGS / "faster_rcnn_r50_fpn_1x_coco.yaml")
    assert faster.model.mask_head is None
    assert faster.model.box_head == mask.model.box_head and faster.train == mask.train
    paper = load_config(CONFIGS / "mask_rcnn_r50_c4_1x_coco.yaml").model
    d2 = load_config(CONFIGS / "mask_rcnn_r50_c4_1x_coco_detectron2.yaml").model
    assert (d2.res5_head.pooler.resolution, d2.res5_head.pooler.sampling_ratio) == (14, 0)
    assert d2.mask_head == paper.mask_head and d2.box_head == paper.box_head
    assert d2.backbone == paper.backbone
