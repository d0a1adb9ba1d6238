"""Configuration errors name the file, the line or the field; YAML floats follow YAML 1.2."""

from __future__ import annotations

import pytest

from kmask.config import ConfigError, load_config


def test_floats_without_a_dot_are_numbers(tmp_path):
    assert load_config(None, ["train.base_learning_rate=1e-3"]).train.base_learning_rate == 1e-3
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  base_learning_rate: 2E-2\n  weight_decay: 1e-4\n")
    config = load_config(path)
    assert (config.train.base_learning_rate, config.train.weight_decay) == (0.02, 1e-4)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("train:\n  max_steps: 10\n\tseed: 1\n", ":3: invalid YAML"),  # a tab
        ("train: [1, 2\n", ":2: invalid YAML"),
    ],
)
def test_invalid_yaml_names_the_file_and_line(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}{where}"):
        load_config(path)


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  seed: 1 # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8"):
        load_config(path)


@pytest.mark.parametrize(
    "override",
    [
        "train.seed=-1",
        "data.seed=-1",
        "data.num_parallel_calls=0",
        "model.box_head.pooler_resolution=0",
        "model.mask_head.pooler_sampling_ratio=100000",
        "model.box_head.pooler_sampling_ratio=-1",
        "train.base_learning_rate=.nan",
        "train.momentum=.nan",
        "train.momentum=1.5",
        "train.weight_decay=.inf",
    ],
)
def test_out_of_range_values_name_the_field(override):
    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])
