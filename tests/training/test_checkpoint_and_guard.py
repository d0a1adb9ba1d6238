"""CheckpointCallback (atomic writes, rotation, pointer, restore) and NonFiniteGuard on a
tiny Keras model; the SIGKILL test kills real processes while they write checkpoints."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kmask.runs.checkpoints import checkpoint_step, latest_checkpoint, read_checkpoint_state
from kmask.training import CheckpointCallback, NonFiniteGuard, NonFiniteLossError


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _data(rng, batches: int, nan_batch: int | None = None):
    x = rng.normal(size=(batches * 2, 4)).astype(np.float32)
    y = rng.normal(size=(batches * 2, 1)).astype(np.float32)
    if nan_batch is not None:
        x[2 * nan_batch] = np.nan
    return x, y


def test_rotation_pointer_and_exact_restore(tmp_path, rng):
    model = _model()
    x, y = _data(rng, 7)
    directory = tmp_path / "checkpoints"
    model.fit(
        x,
        y,
        batch_size=2,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[CheckpointCallback(directory, every_steps=2, keep=2)],
    )
    files = sorted(p.name for p in directory.iterdir())
    # Steps 2, 4, 6 and the final 7; the two newest are kept, nothing temporary is left.
    assert files == ["checkpoint", "ckpt-00000006.weights.h5", "ckpt-00000007.weights.h5"]
    pointer = json.loads((directory / "checkpoint").read_text())
    assert pointer == {
        "latest": "ckpt-00000007.weights.h5",
        "step": 7,
        "checkpoints": ["ckpt-00000006.weights.h5", "ckpt-00000007.weights.h5"],
    }
    assert latest_checkpoint(directory) == directory / "ckpt-00000007.weights.h5"

    restored = _model(seed=1)
    restored.load_weights(latest_checkpoint(directory))
    assert int(restored.optimizer.iterations.numpy()) == 7
    for a, b in zip(
        model.weights + model.optimizer.variables, restored.weights + restored.optimizer.variables
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Training on from the restored state equals training on without interruption.
    more_x, more_y = _data(rng, 2)
    model.fit(more_x, more_y, batch_size=2, shuffle=False, verbose=0)
    restored.fit(more_x, more_y, batch_size=2, shuffle=False, verbose=0)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_latest_falls_back_when_pointer_is_missing_or_stale(tmp_path):
    directory = tmp_path / "checkpoints"
    model = _model()
    callback = CheckpointCallback(directory, every_steps=1, keep=5)
    callback.set_model(model)
    callback.save(3)
    callback.save(5)
    (directory / ".tmp-123-ckpt-00000009.weights.h5").write_bytes(b"half written")
    (directory / "checkpoint").write_text(json.dumps({"latest": "ckpt-00000009.weights.h5"}))
    assert latest_checkpoint(directory).name == "ckpt-00000005.weights.h5"
    (directory / "checkpoint").unlink()
    assert latest_checkpoint(directory).name == "ckpt-00000005.weights.h5"
    assert latest_checkpoint(tmp_path / "nothing") is None
    callback.on_train_begin()  # a new run removes stray temporary files
    assert not list(directory.glob(".tmp-*"))
    with pytest.raises(ValueError, match="not a kmask checkpoint"):
        checkpoint_step("model.weights.h5")


def test_state_is_saved_in_the_checkpoint_file(tmp_path):
    directory = tmp_path / "checkpoints"
    model = _model()
    steps = iter(range(10))
    callback = CheckpointCallback(
        directory, every_steps=1, state=lambda: {"position": next(steps), "name": "x"}
    )
    callback.set_model(model)
    first, second = callback.save(1), callback.save(2)
    assert read_checkpoint_state(first) == {"position": 0, "name": "x"}
    assert read_checkpoint_state(second) == {"position": 1, "name": "x"}
    _model(seed=1).load_weights(second)  # Keras ignores the state
    plain = CheckpointCallback(tmp_path / "plain", every_steps=1)
    plain.set_model(model)
    assert read_checkpoint_state(plain.save(1)) is None


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    model = _model()
    callback = CheckpointCallback(directory, every_steps=1, keep=3)
    callback.set_model(model)
    callback.save(1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        callback.save(2)
    monkeypatch.undo()
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint", "ckpt-00000001.weights.h5"]
    _model().load_weights(latest_checkpoint(directory))


def test_non_finite_weights_are_never_written(tmp_path):
    model = _model()
    model.layers[0].kernel.assign(np.full((4, 8), np.inf, np.float32))
    callback = CheckpointCallback(tmp_path, every_steps=1)
    callback.set_model(model)
    with pytest.raises(NonFiniteLossError, match="weights"):
        callback.save(1)
    assert not list(tmp_path.glob("ckpt-*"))


def test_guard_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(tmp_path, rng):
    model = _model()
    x, y = _data(rng, 8, nan_batch=4)  # the 5th batch (step 5) has a NaN input
    directory = tmp_path / "checkpoints"
    with pytest.raises(NonFiniteLossError) as caught:
        model.fit(
            x,
            y,
            batch_size=2,
            shuffle=False,
            verbose=0,
            callbacks=[NonFiniteGuard(), CheckpointCallback(directory, every_steps=1)],
        )
    assert caught.value.step == 5
    assert caught.value.terms == ("loss",)
    assert "step 5" in str(caught.value)
    latest = latest_checkpoint(directory)
    assert checkpoint_step(latest) == 4
    restored = _model()
    restored.load_weights(latest)
    assert all(np.isfinite(np.asarray(w)).all() for w in restored.weights)


def test_guard_names_the_loss_terms():
    model = _model()
    guard = NonFiniteGuard()
    guard.set_model(model)
    guard.on_train_batch_end(0, {"loss": 1.0, "loss_mask": 0.5})
    with pytest.raises(NonFiniteLossError) as caught:
        guard.on_train_batch_end(1, {"loss": math.nan, "loss_mask": math.inf, "loss_cls": 0.3})
    assert caught.value.terms == ("loss_mask", "loss")
    assert "loss_mask=inf" in str(caught.value)


_WRITER = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
from kmask.runs.checkpoints import latest_checkpoint
from kmask.training import CheckpointCallback
directory = sys.argv[1]
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2048), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), loss="mse")
model.optimizer.build(model.trainable_variables)
latest = latest_checkpoint(directory)
if latest is not None:
    model.load_weights(latest)
x = np.ones((20000, 64), np.float32)
print("ready", flush=True)
model.fit(x, x[:, :1], batch_size=2, verbose=0,
          callbacks=[CheckpointCallback(directory, every_steps=1, keep=2)])
"""


def test_sigkill_during_checkpointing_never_corrupts(tmp_path):
    """Kills a process that writes a checkpoint every step at several moments; each time
    the latest checkpoint loads and the step counter only moves forward."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    directory = tmp_path / "checkpoints"
    previous_step = 0
    for delay in (1.3, 0.7, 2.1):
        process = subprocess.Popen(
            [sys.executable, str(script), str(directory)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline().strip() == "ready"
        # Kill ``delay`` s after this process's first checkpoint (a loaded machine may take
        # longer than any fixed delay to trace and run the first step).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            latest = latest_checkpoint(directory)
            if latest is not None and checkpoint_step(latest) > previous_step:
                break
            time.sleep(0.05)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        latest = latest_checkpoint(directory)
        assert latest is not None
        model = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(2048), keras.layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), loss="mse")
        model.optimizer.build(model.trainable_variables)
        model.load_weights(latest)
        step = int(model.optimizer.iterations.numpy())
        assert step == checkpoint_step(latest) >= previous_step
        previous_step = step
