"""``train.deterministic`` (``kmask.training.Determinism``): the gradient of a batch is the
same bits every time, two runs of one configuration side by side on a loaded machine end
bit-identical, with either RoIAlign implementation; oneDNN, which TensorFlow decides when
it is imported, is refused by the Trainer and switched off by ``kmask train``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

# Private, but the only way to read the switch.
from tensorflow.python.framework import config as framework_config

from kmask.data.stream_position import STREAM_START
from kmask.training import CheckpointCallback, Determinism, Trainer
from tests.cli_runner import CONFIGS
from tests.toy_data import tiny_config, write_shapes
from tests.training.resume_worker import spawn

_ROOT = Path(__file__).resolve().parents[2]
_IMPLEMENTATIONS = ["custom", "tf"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("determinism") / "shapes", num_train=6, num_val=1)


@pytest.mark.parametrize("implementation", _IMPLEMENTATIONS)
def test_gradient_of_a_batch_is_the_same_bits_every_time(shapes, tmp_path, implementation):
    # The twin's gradient once handed the FPN levels views of one buffer, and the sum of a
    # level's gradients (RPN head, box and mask poolers) took its order from thread timing.
    config = tiny_config(
        shapes, "data.min_size=[40,52,64]", f"model.roi_align_implementation={implementation}"
    )
    trainer = Trainer(config, tmp_path / "run")
    model = trainer.build_model(config.train.batch_size)
    batch = next(iter(trainer.dataset()))

    @tf.function
    def gradients(data):
        with tf.GradientTape() as tape:
            losses = model(model._merge(data), training=True)
            total = tf.add_n(list(losses.values()))
        return tape.gradient(total, model.trainable_variables)

    digests = set()
    with Determinism(config.train.deterministic):
        for _ in range(8):
            digest = hashlib.sha1()
            for gradient in gradients(batch):
                digest.update(gradient.numpy().tobytes())
            digests.add(digest.hexdigest())
    assert len(digests) == 1, f"{len(digests)} different gradients in 8 evaluations"


def _train(shapes: Path, out: Path, implementation: str) -> subprocess.Popen:
    return spawn(
        shapes,
        out,
        implementation,
        "--dump",
        str(out) + ".npz",
        "train.max_steps=4",
        "train.steps_per_epoch=2",
        "train.checkpoint_every_steps=4",
        "train.num_visualizations=0",
        "data.min_size=[40,52,64]",
    )


# Another process keeping a core busy, for 10 minutes at most (killed at the end).
_BUSY_LOOP = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass"


@pytest.mark.parametrize("implementation", _IMPLEMENTATIONS)
def test_two_runs_side_by_side_on_a_loaded_machine_are_bit_identical(
    shapes, tmp_path, implementation
):
    busy = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP])
    runs = []
    try:
        runs = [_train(shapes, tmp_path / name, implementation) for name in ("a", "b")]
        outputs = [run.communicate(timeout=600)[0] for run in runs]
    finally:
        for process in [busy, *runs]:
            process.kill()
            process.wait()
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-4000:]
    with np.load(tmp_path / "a.npz") as ours, np.load(tmp_path / "b.npz") as theirs:
        assert ours.files == theirs.files
        different = [name for name in ours.files if not np.array_equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} of {len(ours.files)} arrays differ: {different[:5]}"


def test_resuming_with_another_intra_op_thread_count_warns(shapes, tmp_path, capsys):
    # Eigen splits reductions among the intra-op threads: another count rounds differently.
    config = tiny_config(shapes)
    trainer = Trainer(config, tmp_path / "run")
    model = trainer.build_model(config.train.batch_size)
    threads = Determinism.intra_op_threads()
    for step, count in ((1, threads), (2, threads + 1)):
        state = {"stream_position": STREAM_START.to_dict(), "intra_op_threads": count}
        checkpoints = CheckpointCallback(trainer.run.checkpoints_dir, 1, state=lambda s=state: s)
        checkpoints.set_model(model)
        model.optimizer.iterations.assign(step)
        trainer._restore(model, checkpoints.save(step))
        warning = capsys.readouterr().err
        if count == threads:
            assert "intra-op threads" not in warning, warning
        else:
            assert f"trained with {count} intra-op threads and this process has {threads}" in (
                " ".join(warning.split())
            ), warning


def test_block_switches_op_determinism_on_and_restores_it():
    before = framework_config.is_op_determinism_enabled()
    with Determinism(enabled=False):
        assert framework_config.is_op_determinism_enabled() == before
    with Determinism(enabled=True):
        assert framework_config.is_op_determinism_enabled()
    assert framework_config.is_op_determinism_enabled() == before


_TRAIN_WITH_ONEDNN = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from tensorflow.python.util import _pywrap_util_port

    from kmask.training import Trainer
    from tests.toy_data import tiny_config

    print("oneDNN on:", _pywrap_util_port.IsMklEnabled())
    for deterministic in ("true", "false"):
        config = tiny_config(Path(sys.argv[1]), f"train.deterministic={deterministic}")
        try:
            Trainer(config, Path(sys.argv[2]) / deterministic).train()
        except Exception as error:
            print(f"deterministic={deterministic}: {type(error).__name__}: {error}")
    """
)


def test_trainer_refuses_onednn_when_deterministic(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN_WITH_ONEDNN, str(tmp_path / "no-data"), str(tmp_path)],
        cwd=_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.splitlines()
    assert "oneDNN on: True" in lines, result.stdout + result.stderr[-3000:]
    refused = next(line for line in lines if line.startswith("deterministic=true"))
    assert "ConfigError" in refused
    for part in ("train.deterministic", "oneDNN", "TF_ENABLE_ONEDNN_OPTS=0"):
        assert part in refused, refused
    assert not (tmp_path / "true").exists()  # refused before anything was written
    # Without determinism oneDNN is fine: the run gets as far as the missing data.
    other = next(line for line in lines if line.startswith("deterministic=false"))
    assert "TF_ENABLE_ONEDNN_OPTS" not in other, other


_KMASK_WATCHING_IMPORT = textwrap.dedent(
    """
    import os
    import sys

    class Watch:
        seen = None

        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" and Watch.seen is None:
                Watch.seen = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")

    sys.meta_path.insert(0, Watch())
    from kmask.cli import main

    status = main(sys.argv[1:])
    from tensorflow.python.util import _pywrap_util_port

    print(f"at import: {Watch.seen}; oneDNN on: {_pywrap_util_port.IsMklEnabled()}")
    sys.exit(status)
    """
)


@pytest.mark.parametrize("deterministic, expected", [("true", "0"), ("false", "unset")])
def test_kmask_train_switches_onednn_off_before_importing_tensorflow(
    tmp_path, deterministic, expected
):
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _KMASK_WATCHING_IMPORT,
            "train",
            "--config",
            str(CONFIGS / "shapes_tiny.yaml"),
            "--set",
            f"train.deterministic={deterministic}",
            "--train-json",
            str(tmp_path / "missing.json"),  # stops the run once TensorFlow is loaded
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"at import: {expected};" in result.stdout, result.stdout + result.stderr[-3000:]
    if deterministic == "true":
        assert "oneDNN on: False" in result.stdout


def test_kmask_train_leaves_a_set_onednn_variable_and_reports_the_fix(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from kmask.cli import main; sys.exit(main())",
            "train",
            "--config",
            str(CONFIGS / "shapes_tiny.yaml"),
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "train.deterministic" in result.stderr, result.stderr
    assert "TF_ENABLE_ONEDNN_OPTS=0" in result.stderr, result.stderr
