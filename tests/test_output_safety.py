"""Outputs never destroy what they should not (issue 20, "Safe files"): ``--overwrite``
replaces only folders kmask wrote, the file writer writes through special files and
links, ``kmask evaluate`` checks its outputs first and keeps its metrics, and staging
folders of killed processes are cleaned up. Each case checks that the error names the
path and that every file around is left as it was (contents, inode and type)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmask.cli import main
from kmask.data.image_io import write_atomic
from kmask.data.output_folder import MARKER, OutputFolder
from kmask.evaluation import Predictor
from kmask.runs.run_directory import RunDirectory
from tests import fake_outputs as fake
from tests.cli_runner import run_kmask

CONVERT = ["convert-weights", "--from", "torchvision", "--arch", "fasterrcnn_resnet50_fpn"]


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: (inode, file type, contents of regular files)."""
    entries = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        info = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        entries[str(path.relative_to(folder))] = (info.st_ino, stat.S_IFMT(info.st_mode), data)
    return entries


def _kmask_run(path: Path) -> Path:
    """A small run directory as kmask writes it (marked, with a checkpoint)."""
    with OutputFolder(path, "run").write(overwrite=False) as staging:
        (staging / "config.yaml").write_text("model: {}\n")
        (staging / "checkpoints").mkdir()
        (staging / "checkpoints" / "ckpt-00000010.weights.h5").write_bytes(b"weights")
    return path


@pytest.fixture(autouse=True)
def quick_conversion(monkeypatch):
    """``kmask convert-weights`` with a stand-in for reading and converting the checkpoint
    (any bytes convert to a one-layer model), so that what it writes, where and over what
    is tested in a second."""
    import keras

    from kmask.config import load_config
    from kmask.convert import TorchvisionConverter, checkpoint_reader

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    monkeypatch.setattr(checkpoint_reader, "read_torch_state_dict", lambda path: {})
    monkeypatch.setattr(
        TorchvisionConverter, "convert", lambda self, arrays, source: (load_config(None), model)
    )


@pytest.fixture()
def downloads(tmp_path):
    """``dl/model.pth`` and an unrelated ``dl/notes.txt``."""
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "model.pth").write_bytes(b"checkpoint bytes")
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize("out", ["dl", ".", "dl/model.pth"])
def test_overwrite_never_replaces_the_input(downloads, out, monkeypatch, capsys):
    monkeypatch.chdir(downloads if out == "." else downloads.parent)
    before = _snapshot(downloads)
    argv = [*CONVERT, "--input", str(downloads / "model.pth"), "--out", out, "--overwrite"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"kmask convert-weights: error: --out {out} ")
    assert f"the input {downloads / 'model.pth'}" in error
    assert _snapshot(downloads) == before
    assert sorted(p.name for p in downloads.parent.iterdir()) == ["dl"]  # no staging left


def test_overwrite_names_foreign_files_and_keeps_them(tmp_path, capsys):
    run = _kmask_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "data").mkdir()
    before = _snapshot(run)
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"checkpoint bytes")
    assert main([*CONVERT, "--input", str(pth), "--out", str(run), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert f"--out {run} holds files kmask did not write: data, notes.txt;" in error
    assert _snapshot(run) == before
    # A folder of the user's without the marker and the layout of a run is not replaced
    # either, even when it holds only names a run would.
    (run / "notes.txt").unlink()
    (run / "data").rmdir()
    (run / MARKER).unlink()
    (run / "config.yaml").unlink()
    with pytest.raises(FileExistsError, match=f"--out {run} is not a kmask run folder"):
        OutputFolder(run, "run").check(overwrite=True)


def test_overwrite_replaces_what_kmask_wrote_old_layouts_included(tmp_path):
    run = _kmask_run(tmp_path / "run")
    (run / MARKER).unlink()  # as kmask wrote runs before the marker existed
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"checkpoint bytes")
    assert main([*CONVERT, "--input", str(pth), "--out", str(run), "--overwrite"]) == 0
    assert sorted(p.name for p in run.iterdir()) == [
        MARKER, "categories.json", "checkpoints", "config.yaml",
    ]  # fmt: skip
    assert (run / "checkpoints" / "ckpt-00000000.weights.h5").is_file()
    assert json.loads((run / MARKER).read_text()) == {"written_by": "kmask", "kind": "run"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "run"]


def test_overwrite_refuses_a_run_that_kmask_train_holds(tmp_path, capsys):
    run = _kmask_run(tmp_path / "run")
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"checkpoint bytes")
    argv = [*CONVERT, "--input", str(pth), "--out", str(run), "--overwrite"]
    with RunDirectory(run).lock():  # what a running kmask train holds
        before = _snapshot(run)
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert f"--out {run} is in use by kmask train (pid {os.getpid()})" in error
        assert _snapshot(run) == before
    OutputFolder(run, "run").check(overwrite=True)  # free once the lock is released
    # A kmask train that starts while the new folder is being written: nothing replaced.
    with (
        contextlib.ExitStack() as train,
        pytest.raises(FileExistsError, match="in use"),
        OutputFolder(run, "run").write(overwrite=True) as staging,
    ):
        (staging / "config.yaml").write_text("new\n")
        train.enter_context(RunDirectory(run).lock())
    assert _snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "run"]


@pytest.mark.parametrize("inside", ["gtFine", "", "gtFine/val"])
def test_cityscapes_overwrite_keeps_the_dataset(tmp_path, inside, capsys):
    root = tmp_path / "cityscapes"  # one image without objects: a valid dataset
    for folder in ("gtFine/val/aachen", "leftImg8bit/val/aachen"):
        (root / folder).mkdir(parents=True)
    ids = Image.fromarray(np.zeros((8, 8), np.uint16))
    ids.save(root / "gtFine/val/aachen/aachen_000000_000019_gtFine_instanceIds.png")
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    image.save(root / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png")
    before = _snapshot(tmp_path)
    out = root / inside
    argv = ["convert-cityscapes", "--root", str(root), "--out", str(out), "--overwrite"]
    argv += ["--splits", "val"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"kmask convert-cityscapes: error: --out {out} ")
    assert str(root / "gtFine") in error
    assert _snapshot(tmp_path) == before


def _device_of(path: str) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_ino, stat.S_IFMT(info.st_mode), info.st_rdev


def test_writer_writes_through_devices_fifos_and_links(tmp_path):
    before = _device_of("/dev/null")
    write_atomic("/dev/null", b"discarded")
    assert _device_of("/dev/null") == before and stat.S_ISCHR(before[1])

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, b"through the pipe")
    reader.join(timeout=30)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)

    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    link_inode = link.lstat().st_ino
    write_atomic(link, b"new")
    assert link.is_symlink() and link.lstat().st_ino == link_inode
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "socket"))
        with pytest.raises(OSError, match=f"{tmp_path / 'socket'} is a socket"):
            write_atomic(tmp_path / "socket", b"x")
        assert stat.S_ISSOCK((tmp_path / "socket").lstat().st_mode)


def _without_dac_override() -> None:
    """Makes a root child process subject to file permissions (drops CAP_DAC_OVERRIDE
    from its bounding set before exec); a no-op for other users."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_evaluate_refuses_a_read_only_folder_before_the_work(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    out = read_only / "results.json"
    result = run_kmask(
        "evaluate", "--run", "missing", "--results-out", str(out),
        cwd=tmp_path, preexec_fn=_without_dac_override,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"kmask evaluate: error: --results-out {out}: cannot write to the folder " in (
        result.stderr
    )
    assert "Permission denied" in result.stderr
    assert list(read_only.iterdir()) == []


@pytest.fixture()
def evaluation(tmp_path, monkeypatch):
    """Arguments of ``kmask evaluate`` on the hand-made ground truth of ``fake_outputs``,
    whose model returns the hand-made detections (no model is built)."""
    gt = fake.write_ground_truth(tmp_path)
    for image_id, height, width in fake.IMAGES:
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / f"{image_id}.png")
    config = tmp_path / "config.yaml"
    config.write_text("model: {num_classes: 2}\ndata: {min_size: [80], max_size: 480}\n")
    checkpoint = tmp_path / "weights" / "ckpt-00000007.weights.h5"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"unused")
    outputs = fake.model_outputs("mask_rcnn")
    monkeypatch.setattr(
        Predictor,
        "from_checkpoint",
        classmethod(
            lambda cls, cfg, path, precision: cls(fake.FixedOutputModel(outputs), cfg.data)
        ),
    )
    return [
        "evaluate", "--checkpoint", str(checkpoint), "--config", str(config),
        "--json", str(gt), "--images", str(tmp_path), "--batch-size", "2",
    ]  # fmt: skip


def test_evaluate_keeps_the_metrics_when_the_results_cannot_be_written(
    evaluation, tmp_path, capsys
):
    link = tmp_path / "results.json"
    link.symlink_to("/dev/full")  # a full disk
    device = _device_of("/dev/full")
    metrics = tmp_path / "metrics.json"
    argv = [*evaluation, "--results-out", str(link), "--metrics-out", str(metrics)]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert f"kmask evaluate: error: cannot write --results-out {link}: No space left" in error
    record = json.loads(metrics.read_text())
    assert record["step"] == 7 and 0.0 < record["bbox_AP"] <= 1.0
    assert link.is_symlink() and os.readlink(link) == "/dev/full"
    assert _device_of("/dev/full") == device


_KILLED_WRITER = """
import os, signal, sys
from kmask.data.output_folder import OutputFolder

real_replace = os.replace


def replace(source, destination):  # dies between moving the old output aside and the new in
    real_replace(source, destination)
    if str(destination).endswith("/old"):
        os.kill(os.getpid(), signal.SIGKILL)


out, stage = sys.argv[1], sys.argv[2]
os.replace = replace
with OutputFolder(out, "run").write(overwrite=True) as staging:
    (staging / "config.yaml").write_text("new")
    (staging / "big.bin").write_bytes(bytes(1 << 20))
    if stage == "writing":
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_staging_of_killed_processes_is_removed_and_the_old_output_kept(tmp_path):
    writing, swapping = _kmask_run(tmp_path / "writing"), _kmask_run(tmp_path / "swapping")
    old = _snapshot(swapping)
    children = [
        subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out), stage])
        for out, stage in ((writing, "writing"), (swapping, "swapping"))
    ]
    assert [child.wait(timeout=300) for child in children] == [-signal.SIGKILL] * 2
    stale = sorted(p.name for p in tmp_path.glob(".tmp-*"))
    assert len(stale) == 2 and not swapping.exists()
    decoy = tmp_path / ".tmp-writing-1-abcdefgh"  # named alike, but not kmask's staging
    decoy.mkdir()
    with OutputFolder(writing, "run").write(overwrite=True) as live:  # the rerun
        dead = [name for name in stale if name.startswith(".tmp-writing-")]
        assert not (tmp_path / dead[0]).exists()
        # This write's own staging is alive (its flock held): another rerun keeps it.
        assert OutputFolder(writing, "run").remove_stale_staging() == []
        assert live.is_dir()
        (live / "config.yaml").write_text("rerun")
    assert (writing / "config.yaml").read_text() == "rerun"
    # The killed swap: the old output is put back, the staging removed.
    assert OutputFolder(swapping, "run").remove_stale_staging()
    assert _snapshot(swapping) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [decoy.name, "swapping", "writing"]
