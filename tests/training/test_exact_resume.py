"""Exact resume: a training run SIGKILLed at a random moment and again in the middle of a
checkpoint write, then resumed, ends with every model and optimizer variable bit-identical
to a run never interrupted (CPU), with either RoIAlign implementation (the custom op and
the pure-TensorFlow twin, whose gradient once made the level gradients' sum order depend on
thread timing). The data have a missing image, several training scales, flips and random
anchor and RoI sampling, and the kills fall in the middle of an epoch."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from kmask.runs.checkpoints import checkpoint_step, latest_checkpoint
from tests.toy_data import write_shapes
from tests.training.resume_worker import spawn

_OVERRIDES = [
    "train.max_steps=8",
    "train.steps_per_epoch=3",
    "train.checkpoint_every_steps=1",
    "train.keep_checkpoints=2",
    "train.num_visualizations=0",
    "data.min_size=[40,52,64]",
]


def _worker(shapes: Path, out: Path, implementation: str, *options: str) -> subprocess.Popen:
    return spawn(shapes, out, implementation, *options, *_OVERRIDES)


def _wait_for_line(process: subprocess.Popen, line: str) -> list[str]:
    """Reads the worker's output until ``line`` (or its end); returns what it read."""
    seen = []
    for output in process.stdout:
        seen.append(output.rstrip("\n"))
        if seen[-1] == line:
            break
    return seen


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return output


def _latest_step(run: Path) -> int:
    latest = latest_checkpoint(run / "checkpoints")
    return 0 if latest is None else checkpoint_step(latest)


@pytest.mark.parametrize("implementation", ["custom", "tf"])
def test_killed_runs_resume_bit_identical(tmp_path, implementation):
    shapes = write_shapes(tmp_path / "shapes", num_train=6, num_val=1)
    sorted((shapes / "train").iterdir())[2].unlink()  # a missing image, skipped each pass
    straight = _worker(
        shapes, tmp_path / "straight", implementation, "--dump", str(tmp_path / "straight.npz")
    )
    run = tmp_path / "killed"
    try:
        # 1. SIGKILL at a random moment after the first checkpoint: during a step or the
        #    checkpoint write that follows each step.
        delay = random.uniform(0.0, 1.5)
        first = _worker(shapes, run, implementation)
        seen = _wait_for_line(first, "step 2")
        assert seen[-1] == "step 2", "\n".join(seen[-30:])
        time.sleep(delay)
        first.kill()
        output = _finish(first)
        assert "done" not in output, f"finished before the kill after {delay:.2f} s"
        killed_at = _latest_step(run)
        assert 2 <= killed_at < 8, (delay, killed_at)

        # 2. SIGKILL inside the checkpoint write of a later step: the complete temporary
        #    file is not renamed into place yet.
        victim = min(killed_at + 2, 8)
        second = _worker(shapes, run, implementation, "--kill-in-save", str(victim))
        output = _finish(second)
        assert second.returncode == -9, output[-4000:]
        assert f"ckpt-{killed_at:08d}.weights.h5 at step {killed_at}" in output
        assert _latest_step(run) == victim - 1

        # 3. Resumed to the end.
        third = _worker(shapes, run, implementation, "--dump", str(tmp_path / "resumed.npz"))
        output = _finish(third)
        assert third.returncode == 0, output[-4000:]
        assert f"at step {victim - 1}" in output
    finally:
        output = _finish(straight)
    assert straight.returncode == 0, output[-4000:]

    with np.load(tmp_path / "straight.npz") as ours, np.load(tmp_path / "resumed.npz") as theirs:
        assert ours.files == theirs.files
        assert any(name.startswith("optimizer/") for name in ours.files)
        different = [name for name in ours.files if not np.array_equal(ours[name], theirs[name])]
    assert not different, f"killed after {delay:.2f} s at step {killed_at}: {different}"
