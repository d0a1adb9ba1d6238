"""Trainer on tiny shapes data: the loss goes down, a resumed run matches an uninterrupted
one step for step (count and learning rate) and bit for bit (weights and optimizer), the
run directory is complete, and misuse fails with clear errors."""

import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kmask.config import ConfigError, DataConfig
from kmask.evaluation import Predictor
from kmask.runs.checkpoints import checkpoint_step, latest_checkpoint, read_checkpoint_state
from kmask.training import NonFiniteLossError, Trainer, WarmupStepSchedule
from kmask.training.epoch_plan import epoch_plan
from kmask.training.tensorboard_callback import TensorBoardCallback
from tests import fake_outputs as fake
from tests.toy_data import tiny_config, write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), num_train=4, num_val=2)


def _scalars(log_dir: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(log_dir / "train"), size_guidance={"tensors": 0})
    events.Reload()
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}


def test_epoch_plan():
    assert epoch_plan(0, 10, 5) == [(0, 2, 5)]
    assert epoch_plan(0, 7, 3) == [(0, 2, 3), (2, 3, 1)]
    assert epoch_plan(4, 10, 3) == [(1, 2, 2), (2, 3, 3), (3, 4, 1)]
    assert epoch_plan(10, 10, 3) == []


class _StopAt(keras.callbacks.Callback):
    """Simulates a crash: raises once the optimizer reaches ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow  # test_exact_resume kills and resumes real runs in the default suite
def test_resume_matches_an_uninterrupted_run(shapes, tmp_path):
    config = tiny_config(shapes)  # 6 steps, epochs of 3, checkpoints every 2, lr step at 4
    straight = tmp_path / "straight"
    uninterrupted = Trainer(config, straight, verbose=0)
    uninterrupted.train()

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, resumed, verbose=0, callbacks=[_StopAt(3)]).train()
    assert latest_checkpoint(resumed / "checkpoints").name == "ckpt-00000002.weights.h5"
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config, resumed, verbose=0).train()
    trainer = Trainer(config, resumed, verbose=0)
    trainer.train(resume=True)  # from step 2, in the middle of the first epoch

    assert int(trainer.model.optimizer.iterations.numpy()) == 6
    state = read_checkpoint_state(resumed / "checkpoints" / "ckpt-00000006.weights.h5")
    assert set(state) == {"stream_position", "intra_op_threads"}
    ours, theirs = trainer.model, uninterrupted.model
    for a, b in zip(
        ours.weights + ours.optimizer.variables, theirs.weights + theirs.optimizer.variables
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    for run in (straight, resumed):
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == [
            "checkpoint",
            "ckpt-00000002.weights.h5",
            "ckpt-00000004.weights.h5",
            "ckpt-00000006.weights.h5",
        ]
    rates = _scalars(straight / "logs", "learning_rate")
    assert sorted(rates) == [1, 2, 3, 4, 5, 6]
    assert _scalars(resumed / "logs", "learning_rate") == rates
    schedule = WarmupStepSchedule(0.01, boundaries=(4,), warmup_steps=2, warmup_factor=0.001)
    for step, rate in rates.items():
        assert rate == pytest.approx(float(schedule(step - 1)), rel=1e-6)
    # Nothing more to do once max_steps is reached.
    assert Trainer(config, resumed, verbose=0).train(resume=True) == {}


def test_run_directory_contents(shapes, tmp_path):
    config = tiny_config(
        shapes,
        "train.max_steps=2",
        "train.steps_per_epoch=2",
        "train.eval_every_epochs=1",
        "eval.max_images=2",
    )
    history = Trainer(config, tmp_path, verbose=0).train()
    assert {"loss", "loss_mask", "val_segm_AP", "val_bbox_AP"} <= set(history)
    assert (tmp_path / "config.yaml").is_file()
    assert [c["name"] for c in json.loads((tmp_path / "categories.json").read_text())] == [
        "circle",
        "square",
        "triangle",
    ]
    events = EventAccumulator(str(tmp_path / "logs" / "train"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {
        "losses/loss_mask",
        "losses/loss_rpn_cls",
        "learning_rate",
        "epoch/val_segm_AP",
        "predictions/0",
    } <= tags
    picture = tf.io.decode_png(tf.make_ndarray(events.Tensors("predictions/0")[0].tensor_proto)[2])
    assert picture.shape[-1] == 3 and picture.shape[0] >= 512


@pytest.mark.parametrize(
    "mode, overrides",
    [
        ("faster_rcnn", ("model.mask_head=null",)),
        ("rpn", ("model.mask_head=null", "model.box_head=null")),
    ],
)
def test_evaluation_during_training_follows_the_mode(shapes, tmp_path, mode, overrides):
    """Without a mask head only box AP (and proposal AR) is evaluated; without RoI heads
    only proposal AR. The logs and pictures follow."""
    config = tiny_config(
        shapes,
        "train.max_steps=1",
        "train.steps_per_epoch=1",
        "train.eval_every_epochs=1",
        "eval.max_images=2",
        *overrides,
    )
    history = Trainer(config, tmp_path, verbose=0).train()
    assert not any("segm" in key or key == "loss_mask" for key in history)
    assert "val_AR@1000" in history
    assert ("val_bbox_AP" in history) == (mode == "faster_rcnn")
    assert ("loss_cls" in history) == (mode == "faster_rcnn")
    events = EventAccumulator(str(tmp_path / "logs" / "train"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"predictions/0", "epoch/val_AR@1000"} <= set(events.Tags()["tensors"])


def test_loss_decreases(shapes, tmp_path):
    losses = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses[int(self.model.optimizer.iterations.numpy())] = float(logs["loss"])

    config = tiny_config(
        shapes,
        "train.max_steps=30",
        "train.steps_per_epoch=30",
        "train.lr_steps=[100]",
        "train.warmup_steps=5",
        "train.checkpoint_every_steps=100",
        "train.num_visualizations=0",
        "train.base_learning_rate=0.005",
        "train.grad_clip_norm=5.0",
    )
    Trainer(config, tmp_path, verbose=0, callbacks=[Record()]).train()
    # Running means over the epoch -> means over steps 1..5 and 26..30.
    first = losses[5]
    last = (30 * losses[30] - 25 * losses[25]) / 5
    assert np.isfinite(last) and last < 0.8 * first, (first, last)


def test_configuration_errors(shapes, tmp_path):
    with pytest.raises(ConfigError, match="model.num_classes=3"):
        Trainer(tiny_config(shapes, "model.num_classes=5"), tmp_path, verbose=0).train()
    with pytest.raises(ConfigError, match="no training data"):
        Trainer(tiny_config(shapes, "train.json_path=null"), tmp_path, verbose=0).train()


def test_mixed_precision_checkpoint_serves_float32(shapes, tmp_path):
    """A mixed_float16 run (loss-scaled optimizer) writes checkpoints that the float32
    inference model of ``kmask evaluate``/``predict`` loads."""
    from kmask.evaluation import Predictor

    config = tiny_config(
        shapes,
        "train.mixed_precision=mixed_float16",
        "train.max_steps=1",
        "train.num_visualizations=0",
    )
    trainer = Trainer(config, tmp_path, verbose=0)
    trainer.train()
    assert trainer.model.backbone.compute_dtype == "float16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    # (A step whose loss-scaled gradients overflow is skipped and not counted.)
    predictor = Predictor.from_checkpoint(config, latest_checkpoint(tmp_path / "checkpoints"))
    assert predictor.model.backbone.compute_dtype == "float32"
    for ours, theirs in zip(predictor.model.trainable_variables, trainer.model.trainable_variables):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    # Step 1 runs at lr 1e-3, step 2 at 5e5: the model blows up right after the first
    # checkpoint.
    config = tiny_config(
        shapes,
        "train.base_learning_rate=1000000.0",
        "train.warmup_factor=0.000000001",
        "train.warmup_steps=2",
        "train.checkpoint_every_steps=1",
        "train.keep_checkpoints=30",
        "train.max_steps=30",
        "train.steps_per_epoch=30",
        "train.num_visualizations=0",
    )
    with pytest.raises(NonFiniteLossError) as caught:
        Trainer(config, tmp_path, verbose=0).train()
    assert f"at step {caught.value.step}" in str(caught.value)
    assert caught.value.terms and all(
        t.startswith("loss") or t == "weights" for t in caught.value.terms
    )
    latest = latest_checkpoint(tmp_path / "checkpoints")
    assert 1 <= checkpoint_step(latest) <= caught.value.step
    arrays = []
    with h5py.File(latest) as handle:
        handle.visititems(
            lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None
        )
    assert arrays and all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f")


@pytest.mark.parametrize("mode", ["mask_rcnn", "faster_rcnn", "rpn"])
@pytest.mark.parametrize("empty", [False, True])
def test_tensorboard_pictures_in_every_mode(mode, empty, tmp_path):
    """Pictures of hand-made outputs (no real model): detections with or without masks,
    or the best proposals; only "no detections" written when nothing was found."""
    predictor = Predictor(fake.FixedOutputModel(fake.model_outputs(mode, empty)), DataConfig())
    batch = fake.features_batch()
    callback = TensorBoardCallback(
        tmp_path,
        1,
        visualization_batch=batch,
        predictor=predictor,
        class_names=("cat", "dog"),
        score_threshold=0.0,
        num_proposals=3,
    )
    pictures = callback.draw_predictions()
    # 400 x 480 and 80 x 80 resized images, enlarged 2x and 7x to reach 512 px.
    assert [p.shape for p in pictures] == [(800, 960, 3), (560, 560, 3)]
    for picture, factor in zip(pictures, (2, 7)):
        if empty:  # nothing drawn but the "no detections" tag at the top left
            assert picture[:8, :8].all() and not picture[picture.shape[0] // 2 :].any()
        else:
            assert picture[::factor, ::factor].any()
