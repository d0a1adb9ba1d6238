"""Fine-tuning inputs that were taken wrongly or crashed: ``train.init_class_map`` with a
key given twice (YAML keeps the last) or unknown names on both sides, and a ``.keras``
file that is damaged or truncated. Each error names the file, the key or the names."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import pytest

from kmask.cli import main
from kmask.training import WeightTransfer, WeightTransferError


def test_a_key_given_twice_in_the_config_is_refused(tmp_path, capsys):
    config = tmp_path / "finetune.yaml"
    config.write_text(
        "train:\n"
        "  init_from: runs/coco\n"
        "  init_class_map:\n"
        "    person: person\n"
        "    car: car\n"
        "    person: rider\n"
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"kmask train: error: {config}:6: invalid YAML: duplicate key 'person'" in err
    assert "Traceback" not in err and not run.exists()


def test_unknown_class_names_are_named_on_both_sides():
    transfer = WeightTransfer({}, "runs/coco", class_names=("person", "car"))
    with pytest.raises(WeightTransferError) as error:
        transfer.class_rows(("rider", "car"), {"rider": "cyclist", "bike": "car"})
    assert str(error.value) == (
        "train.init_class_map: bike not among the training data's classes: rider, car; "
        "cyclist not among the classes of runs/coco: person, car"
    )


@pytest.fixture
def keras_file(tmp_path: Path) -> Path:
    """A small model saved as .keras (a zip archive of stored, uncompressed members)."""
    path = tmp_path / "model.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")]).save(path)
    return path


def test_an_intact_keras_file_loads(keras_file):
    assert "dense/kernel" in WeightTransfer.from_path(keras_file).weights


def test_a_keras_file_with_a_crc_error_is_named(keras_file):
    with zipfile.ZipFile(keras_file) as archive:
        member = archive.getinfo("model.weights.h5")
    data = bytearray(keras_file.read_bytes())
    name_and_extra = int.from_bytes(
        data[member.header_offset + 26 : member.header_offset + 30], "little"
    )
    data[member.header_offset + 30 + name_and_extra + member.file_size // 2] ^= 0xFF
    keras_file.write_bytes(bytes(data))
    with pytest.raises(WeightTransferError) as error:
        WeightTransfer.from_path(keras_file)
    assert str(error.value) == (
        f"--init-from {keras_file}: damaged .keras file: its member model.weights.h5 fails "
        "the CRC check; save or copy it again"
    )


def test_a_truncated_keras_file_is_named(keras_file):
    data = keras_file.read_bytes()
    keras_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightTransferError) as error:
        WeightTransfer.from_path(keras_file)
    message = str(error.value)
    assert message.startswith(f"--init-from {keras_file}: not a readable .keras file (a zip ")
    assert "truncated or damaged" in message and "File not found" not in message
