"""What protects a run directory: the lock against a second trainer, config.yaml written only
after a successful start, the fallback to the newest intact checkpoint, and clear errors
for training data that gives no batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kmask.data import DataError
from kmask.runs import RunDirectory, all_checkpoints
from kmask.training import RunLockedError, Trainer
from tests.toy_data import tiny_config, write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=2, num_val=1)


def test_second_trainer_refuses_a_locked_run_naming_the_pid(shapes, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from kmask.runs.run_directory import RunDirectory
                with RunDirectory({str(tmp_path)!r}).lock():
                    print("locked", flush=True)
                    time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}") as error:
            Trainer(tiny_config(shapes), tmp_path, verbose=0).train()
        assert str(tmp_path) in str(error.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases the lock of a dead process
        holder.wait(timeout=60)
    with RunDirectory(tmp_path).lock():
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_truncated_checkpoint_falls_back_and_failed_resume_keeps_config(shapes, tmp_path, capfd):
    run = tmp_path / "run"
    Trainer(tiny_config(shapes, "train.max_steps=2"), run, verbose=0).train()
    checkpoints = run / "checkpoints"
    good = checkpoints / "ckpt-00000002.weights.h5"
    bad = checkpoints / "ckpt-00000004.weights.h5"
    bad.write_bytes(good.read_bytes()[:5000])  # a damaged newer checkpoint
    (checkpoints / "checkpoint").write_text(json.dumps({"latest": bad.name, "step": 4}))

    trainer = Trainer(tiny_config(shapes, "train.max_steps=3"), run, verbose=0)
    trainer.train(resume=True)
    assert int(trainer.model.optimizer.iterations.numpy()) == 3
    err = capfd.readouterr().err
    assert f"cannot resume from {bad}" in err

    # Nothing intact left: the resume fails and config.yaml keeps the run's values.
    saved = (run / "config.yaml").read_text()
    for path in all_checkpoints(checkpoints):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError, match="no intact checkpoint") as error:
        Trainer(tiny_config(shapes, "train.max_steps=9"), run, verbose=0).train(resume=True)
    assert "ckpt-00000003.weights.h5" in str(error.value)
    assert (run / "config.yaml").read_text() == saved


def test_no_readable_batch_is_an_error_and_strict_errors_stay_data_errors(shapes, tmp_path):
    images = tmp_path / "images"
    images.mkdir()  # the JSON's images are missing
    with pytest.raises(DataError, match="gave 0 of 2 batches") as error:
        Trainer(
            tiny_config(shapes, f"train.images_dir={images}", "train.max_steps=2"),
            tmp_path / "run",
            verbose=0,
        ).train()
    assert "missing image file" in str(error.value)
    with pytest.raises(DataError, match=r"missing image file.*\(strict mode\)"):
        Trainer(
            tiny_config(shapes, f"train.images_dir={images}", "data.strict=true"),
            tmp_path / "strict",
            verbose=0,
        ).train()
