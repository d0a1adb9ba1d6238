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
        "model.box_head.pooler.resolution=0",
        "model.mask_head.pooler.sampling_ratio=100000",
        "model.box_head.pooler.sampling_ratio=-1",
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


def test_a_bad_override_is_blamed_not_the_file(tmp_path):
    """A typo in ``--set`` names the override and the closest key; a typo in the file
    names the file; overrides that are valid only together still load."""
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  max_steps: 10\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["train.seed=3", "train.max_step=150"])
    message = str(error.value)
    assert message.startswith(f"override 'train.max_step=150' (over {path}): train: ")
    assert "unknown key(s) max_step (did you mean max_steps?)" in message
    path.write_text("train:\n  max_step: 10\n")
    with pytest.raises(ConfigError, match=rf"^{path}: train: unknown key\(s\) max_step \(did"):
        load_config(path, ["train.seed=3"])
    rpn_only = load_config(None, ["model.box_head=null", "model.mask_head=null"]).model
    assert rpn_only.box_head is None and not rpn_only.instance_heads
    with pytest.raises(ConfigError, match=r"^override 'model.box_head=null' \(over defaults\)"):
        load_config(None, ["model.box_head=null"])
