"""Shipped configs by name: ``--config shapes_tiny`` from any working directory and from an
installed wheel (``kmask/_configs``, with ``_base_/``; the RoIAlign sources as
``kmask/_csrc``), and ``kmask configs`` lists them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kmask.cli import main
from kmask.config import load_config

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(path.stem for path in (ROOT / "configs").glob("*.yaml"))


def test_kmask_configs_lists_every_shipped_config(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == NAMES
    shapes = next(line for line in lines if line.startswith("shapes_tiny "))
    assert "Mask R-CNN on the synthetic shapes dataset" in shapes
    assert lines[-1].startswith(f"({len(NAMES)} configs in ")


def test_a_name_is_the_shipped_file_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_path = load_config(ROOT / "configs" / "mask_rcnn_r50_fpn_1x_coco.yaml")
    assert load_config("mask_rcnn_r50_fpn_1x_coco") == by_path
    assert load_config("mask_rcnn_r50_fpn_1x_coco.yaml") == by_path
    (tmp_path / "shapes_tiny.yaml").write_text("train: {max_steps: 7}\n")
    assert load_config("shapes_tiny.yaml").train.max_steps == 7  # a file wins over a name
    with pytest.raises(FileNotFoundError, match="nor a shipped config name; `kmask configs`"):
        load_config("mask_rcnn_r50_fpn_9x")
    with pytest.raises(FileNotFoundError, match="config file not found: sub/shapes_tiny"):
        load_config("sub/shapes_tiny")  # a path is never looked up by name


def test_the_wheel_ships_the_configs_and_the_op_sources(tmp_path):
    """The built wheel holds every config (``_base_/`` too) and the op's sources; unpacked
    outside the checkout, ``--config NAME`` finds them there."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("kmask-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for path in (ROOT / "configs").rglob("*.yaml"):
        assert f"kmask/_configs/{path.relative_to(ROOT / 'configs').as_posix()}" in names
    for path in (ROOT / "custom_ops" / "roi_align").iterdir():
        if path.suffix in (".cc", ".h", ".cuh"):
            assert f"kmask/_csrc/{path.name}" in names
    probe = (
        "from kmask.config import load_config\n"
        "from kmask.config.shipped_configs import configs_dir\n"
        "print(configs_dir())\n"
        "print(load_config('shapes_tiny').train.max_steps)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    folder, steps = result.stdout.split()
    assert folder == str(tmp_path / "site" / "kmask" / "_configs")
    assert int(steps) == load_config(ROOT / "configs" / "shapes_tiny.yaml").train.max_steps
