"""A checkpoint that cannot be written (full disk) ends ``kmask train`` with a clear error."""

from __future__ import annotations

import resource
import signal

from tests.cli_runner import CONFIGS, run_kmask
from tests.toy_data import tiny_overrides, write_shapes

LIMIT = 20 * 2**20  # bytes: config and categories fit, a checkpoint (tens of MB) does not


def _file_size_limit() -> None:
    # Writes beyond the limit fail with EFBIG, as writes to a full disk fail with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_failed_checkpoint_write_is_a_clean_error(tmp_path):
    shapes = write_shapes(tmp_path / "shapes", num_train=2, num_val=1)
    run = tmp_path / "run"
    overrides = [*tiny_overrides(shapes), "train.max_steps=1", "train.num_visualizations=0"]
    sets = [arg for override in overrides for arg in ("--set", override)]
    result = run_kmask(
        "train",
        "--config",
        str(CONFIGS / "shapes_tiny.yaml"),
        "--out",
        str(run),
        *sets,
        cwd=tmp_path,
        preexec_fn=_file_size_limit,
    )
    # Exit status 1, not a crash (-11: HDF5 used to segfault at exit after the failed
    # write). HDF5's own clean-up messages may precede the error line.
    assert result.returncode == 1, result.stderr[-2000:]
    assert "kmask/" not in result.stderr, "no kmask traceback"
    message = result.stderr.strip().splitlines()[-1]
    assert "cannot write checkpoint" in message and "ckpt-00000001.weights.h5" in message
    assert "File too large" in message and "no checkpoint" in message
    assert not list((run / "checkpoints").glob("*")), "nothing half-written is left"
    assert (run / "config.yaml").is_file()


def test_a_disk_too_full_for_the_checkpoint_is_refused_before_writing(tmp_path, monkeypatch):
    import collections

    import keras
    import pytest

    from kmask.training import CheckpointCallback, CheckpointWriteError
    from kmask.training import checkpoint_callback as module

    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(256)])  # 263 KB
    callback = CheckpointCallback(tmp_path / "checkpoints", every_steps=1)
    callback.set_model(model)
    first = callback.save(1)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(module.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10**6))
    with pytest.raises(CheckpointWriteError, match="No space left on device") as error:
        callback.save(2)
    assert "ckpt-00000002.weights.h5" in str(error.value)
    assert f"the previous checkpoint {first} is intact" in str(error.value)
    assert sorted(p.name for p in first.parent.iterdir()) == ["checkpoint", first.name]
