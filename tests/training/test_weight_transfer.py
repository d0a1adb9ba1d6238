"""WeightTransfer (``train.init_from``): every shared weight copied bit for bit, only the
class-dependent layers re-initialized, other mismatches refused with nothing copied; the
sources (run directory, checkpoint, .keras file) and a fine-tuning run through the Trainer
and the CLI with a two-phase schedule."""

from pathlib import Path

import keras
import numpy as np
import pytest

from kmask.cli import main
from kmask.convert.converted_run import write_converted_run
from kmask.modeling import build_mask_rcnn
from kmask.training import Trainer, WeightTransfer, WeightTransferError
from kmask.training.weight_transfer import class_dependent_layers, weight_names
from tests.toy_data import tiny_config, tiny_overrides, write_shapes

NEW_SHAPES = ("pentagon", "hexagon", "ellipse", "rhombus")
# kernel and bias of box_head/cls_score, box_head/bbox_pred and mask_head/predictor.
CLASS_DEPENDENT_WEIGHTS = 6


def _model(*overrides: str, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_mask_rcnn(tiny_config(Path("unused"), *overrides).model)
    model.build({"images": (None, None, None, 3)})
    return model


def _arrays(model: keras.Model) -> dict[str, np.ndarray]:
    return {name: np.array(v.numpy()) for name, v in weight_names(model).items()}


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def source() -> keras.Model:
    return _model(seed=0)  # 3 classes


@pytest.fixture(scope="module")
def source_run(source, tmp_path_factory) -> Path:
    """``source`` written as ``kmask convert-weights`` writes a run directory."""
    out = tmp_path_factory.mktemp("source") / "run"
    categories = [{"id": i + 1, "name": f"c{i}"} for i in range(3)]
    config = tiny_config(Path("unused"))
    return write_converted_run(out, config, source, categories, keras_file=True)


@pytest.fixture(scope="module")
def new_shapes(tmp_path_factory) -> Path:
    """A shapes dataset of 4 classes the source has never seen."""
    root = tmp_path_factory.mktemp("new_shapes")
    return write_shapes(root, num_train=4, num_val=2, shapes=NEW_SHAPES)


def test_more_classes_keep_every_shared_weight_bit_identical(source):
    target = _model("model.num_classes=5", seed=1)
    before = _arrays(target)
    rows = WeightTransfer.from_model(source).load_into(target)
    after, expected = _arrays(target), _arrays(source)

    statuses = {name: status for name, status, _ in rows}
    reinitialized = sorted(name for name, status in statuses.items() if status != "loaded")
    assert len(reinitialized) == CLASS_DEPENDENT_WEIGHTS
    assert all(any(layer in name for layer in class_dependent_layers()) for name in reinitialized)
    assert {statuses[name] for name in reinitialized} == {"re-initialized"}
    for name in after:
        if name in reinitialized:
            assert _bits_equal(after[name], before[name]), name  # kept its own init
            assert after[name].shape != expected[name].shape
        else:
            assert _bits_equal(after[name], expected[name]), name
    # The seeds differ, so the copy did something.
    assert not _bits_equal(
        before["backbone/conv1_conv/kernel"], expected["backbone/conv1_conv/kernel"]
    )

    table = WeightTransfer.format_table(rows)
    assert "roi_heads/box_head/cls_score/kernel" in table and "(64, 4) != model (64, 6)" in table
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:6]}
    assert lines["backbone"] == ["212", "0", "0"]
    assert lines["roi_heads"] == ["8", "6", "0"]


def test_other_shape_mismatch_is_refused_and_nothing_is_copied(source):
    target = _model("model.num_classes=5", "model.box_head.fc_dim=32", seed=1)
    before = _arrays(target)
    with pytest.raises(WeightTransferError) as error:
        WeightTransfer.from_model(source, "runs/src").load_into(target)
    message = str(error.value)
    assert "runs/src" in message
    assert "roi_heads/box_head/fc1/kernel: source (1568, 64), model (1568, 32)" in message
    assert "cls_score" not in message.split("have other shapes:")[1]
    assert all(_bits_equal(a, before[k]) for k, a in _arrays(target).items())


def test_sources_on_disk(source, source_run, tmp_path):
    expected = _arrays(source)
    checkpoint = source_run / "checkpoints" / "ckpt-00000000.weights.h5"
    for path in (source_run, checkpoint, source_run / "model.keras"):
        weights = WeightTransfer.from_path(path).weights
        assert sorted(weights) == sorted(expected), path
        assert all(_bits_equal(weights[k], expected[k]) for k in expected), path

    stray = tmp_path / "ckpt.weights.h5"
    stray.write_bytes(checkpoint.read_bytes())
    with pytest.raises(WeightTransferError, match="config.yaml"):
        WeightTransfer.from_path(stray)
    with pytest.raises(FileNotFoundError, match="missing"):
        WeightTransfer.from_path(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(WeightTransferError, match="run directory"):
        WeightTransfer.from_path(tmp_path / "notes.txt")


def test_stages_load_by_name_into_a_model_of_the_users(source):
    """The backbone and FPN of a detector under a new head, in a functional model."""
    from kmask.modeling import FPN, ResNet

    images = keras.Input((64, 64, 3))
    backbone = ResNet(norm="gn", freeze_at=0, name="backbone")
    pyramid = FPN(num_channels=32, name="fpn")(backbone(images))
    logits = keras.layers.Conv2D(2, 1, name="segmentation")(pyramid["P2"])
    model = keras.Model(images, logits)

    rows = WeightTransfer.from_model(source).load_into(model)
    statuses = {name: status for name, status, _ in rows}
    assert {k for k, s in statuses.items() if s == "new"} == {
        "segmentation/kernel",
        "segmentation/bias",
    }
    expected = _arrays(source)
    for name, variable in weight_names(model).items():
        if not name.startswith("segmentation"):
            assert _bits_equal(np.array(variable.numpy()), expected[name]), name

    head = keras.layers.Dense(2, name="head")
    with pytest.raises(WeightTransferError, match="no weights yet"):
        WeightTransfer.from_model(source).load_into(head)
    head.build((None, 4))
    with pytest.raises(WeightTransferError, match="none of its 2 weights"):
        WeightTransfer.from_model(source).load_into(head)


def _phase_snapshots(step_numbers):
    """A callback keeping the weights after each optimizer step in ``step_numbers``."""

    class Snapshots(keras.callbacks.Callback):
        taken: dict[int, dict[str, np.ndarray]] = {}

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            if step in step_numbers:
                self.taken[step] = _arrays(self.model)

    return Snapshots()


@pytest.mark.slow  # a few minutes on 2 busy cores (two traces of the train step)
def test_fine_tuning_run_heads_first_then_all(source, source_run, new_shapes, capsys):
    """A Trainer run initialized from a 3-class run on 4 new classes: phase 1 (2 steps)
    trains the heads on the copied backbone, phase 2 the backbone too."""
    config = tiny_config(
        new_shapes,
        "model.num_classes=4",
        f"train.init_from={source_run}",
        "train.trainable=all",
        "train.heads_first_steps=2",
        "train.max_steps=3",
        "train.steps_per_epoch=3",
        "train.num_visualizations=0",
    )
    snapshots = _phase_snapshots({2, 3})
    trainer = Trainer(config, new_shapes / "run", verbose=0, callbacks=[snapshots])
    trainer.train()
    out = capsys.readouterr().out
    assert f"initialized from {source_run}" in out
    assert "re-initialized: roi_heads/mask_head/predictor/kernel" in out
    assert "trainable: heads from step 0" in out and "trainable: all from step 2" in out

    expected = _arrays(source)
    phase1, phase2 = snapshots.taken[2], snapshots.taken[3]
    backbone = [name for name in expected if name.startswith("backbone/")]
    assert all(_bits_equal(phase1[name], expected[name]) for name in backbone)
    assert not _bits_equal(phase1["fpn/fpn_lateral2/kernel"], expected["fpn/fpn_lateral2/kernel"])
    assert sum(not _bits_equal(phase2[name], expected[name]) for name in backbone) > 100


def test_cli_refusal_names_the_layer_and_leaves_the_run_as_it_was(source_run, new_shapes, capsys):
    out = new_shapes / "refused"
    config = new_shapes / "config.yaml"
    config.write_text("model: {num_classes: 4}\n")
    overrides = [o for o in tiny_overrides(new_shapes) if not o.startswith("model.num_classes")]
    args = ["train", "--config", str(config), "--out", str(out), "--init-from", str(source_run)]
    for override in [*overrides, "model.mask_head.conv_dim=8"]:
        args += ["--set", override]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "roi_heads/mask_head/convs/conv1/kernel: source (3, 3, 32, 16), model (3, 3, 32, 8)" in (
        error
    )
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()
