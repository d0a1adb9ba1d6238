"""``train.trainable`` presets: exactly the named backbone stages train (trainable variables
counted per stage), the mapping equals torchvision's ``trainable_backbone_layers``, frozen
BN stays frozen, the config refuses unknown presets, and the two-phase callback trains the
heads first, then more."""

from pathlib import Path

import keras
import numpy as np
import pytest

from kmask.config import TRAINABLE_PRESETS, ConfigError, load_config
from kmask.modeling import build_mask_rcnn
from kmask.training import TrainablePhaseCallback, TrainablePreset
from tests.toy_data import tiny_config

# Trainable variables of the tiny config's GroupNorm ResNet-50, by stage: the stem (conv
# kernel + bias, GN gamma + beta), then per stage 12 per bottleneck (3 convs and 3 GNs
# with 2 each) plus 4 for the first block's projection shortcut.
STEM = 4
STAGES = {2: 3 * 12 + 4, 3: 4 * 12 + 4, 4: 6 * 12 + 4, 5: 3 * 12 + 4}
# FPN: 4 lateral + 4 output convs; RPN: conv, objectness, deltas; RoI heads: fc1, fc2,
# cls_score, bbox_pred, then the mask head's conv, deconv and predictor (kernel + bias each).
OTHERS = {"fpn": 16, "rpn": 6, "roi_heads": 14}
EXPECTED_BACKBONE = {
    "heads": 0,
    "5+": STAGES[5],
    "4+": STAGES[5] + STAGES[4],
    "3+": STAGES[5] + STAGES[4] + STAGES[3],
    "all": STEM + sum(STAGES.values()),
}


@pytest.fixture(scope="module")
def model() -> keras.Model:
    model = build_mask_rcnn(tiny_config(Path("unused")).model)  # GN, freeze_at 0
    model.build({"images": (None, None, None, 3)})
    return model


@pytest.mark.parametrize("name", list(TRAINABLE_PRESETS))
def test_preset_trains_exactly_the_named_stages(model, name):
    TrainablePreset(name).apply(model)
    assert len(model.backbone.trainable_variables) == EXPECTED_BACKBONE[name]
    for stage, count in OTHERS.items():
        assert len(getattr(model, stage).trainable_variables) == count, stage
    trainable = {id(v) for v in model.trainable_variables}
    for variable in model.backbone.weights:
        stage = 1 if variable.path.split("/")[2].startswith("conv1") else None
        if stage is None:
            stage = int(variable.path.split("/")[2][4])  # conv<stage>_block<i>
        assert (id(variable) in trainable) == (stage > TrainablePreset(name).frozen_stages)


def test_presets_are_torchvisions_trainable_backbone_layers():
    """torchvision's resnet_fpn_backbone(trainable_layers=k) trains the same stages as the
    preset whose number is k (its layer1..layer4 are conv2..conv5)."""
    backbone_utils = pytest.importorskip("torchvision.models.detection.backbone_utils")
    stage_of = {"conv1": 1, "bn1": 1, "layer1": 2, "layer2": 3, "layer3": 4, "layer4": 5}
    for name, layers in TRAINABLE_PRESETS.items():
        backbone = backbone_utils.resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, trainable_layers=layers
        )
        trained = {
            stage_of[param_name.split(".")[0]]
            for param_name, param in backbone.body.named_parameters()
            if param.requires_grad
        }
        assert trained == set(range(TrainablePreset(name).frozen_stages + 1, 6)), name


def test_frozen_batch_norm_stays_frozen_under_all():
    model = build_mask_rcnn(tiny_config(Path("unused"), "model.backbone.norm=frozen_bn").model)
    model.build({"images": (None, None, None, 3)})
    TrainablePreset("all").apply(model)
    assert not any("_bn/" in v.path for v in model.backbone.trainable_variables)
    assert len(model.backbone.trainable_variables) == 2 + 2 * (3 + 4 + 6 + 3) * 3 + 2 * 4


def test_unknown_presets_are_refused():
    with pytest.raises(ValueError, match=r"'2\+'.*\['heads', '5\+', '4\+', '3\+', 'all'\]"):
        TrainablePreset("2+")
    with pytest.raises(ConfigError, match="train.trainable: expected one of heads, 5"):
        tiny_config(Path("unused"), "train.trainable=layers")
    with pytest.raises(ConfigError, match="heads_first_steps needs train.trainable"):
        tiny_config(Path("unused"), "train.heads_first_steps=10", "train.trainable=heads")


class _Stages(keras.layers.Layer):
    """A stand-in backbone of five one-unit Dense 'stages' with ``freeze``."""

    def __init__(self) -> None:
        super().__init__(name="backbone")
        self.stages = [keras.layers.Dense(1, name=f"stage{i}") for i in range(1, 6)]

    def freeze(self, stages: int) -> None:
        for i, layer in enumerate(self.stages, start=1):
            layer.trainable = i > stages

    def call(self, x):
        for layer in self.stages:
            x = layer(x)
        return x


class _Model(keras.Model):
    def __init__(self) -> None:
        super().__init__(name="model")
        self.backbone = _Stages()
        self.head = keras.layers.Dense(1, name="head")

    def call(self, x):
        return self.head(self.backbone(x))


def test_phase_callback_trains_heads_first_then_more(capsys):
    """Steps 0-1 with ``heads`` (backbone still), then ``4+`` (stages 4 and 5 move)."""
    keras.utils.set_random_seed(0)
    model = _Model()
    model(np.ones((1, 1), np.float32))
    TrainablePreset("4+").apply(model)  # the larger phase, before the optimizer is built
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    kept = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            kept[step] = [np.array(layer.kernel) for layer in model.backbone.stages]

    initial = [np.array(layer.kernel) for layer in model.backbone.stages]
    x, y = np.ones((4, 1), np.float32), np.full((4, 1), 3.0, np.float32)
    phases = TrainablePhaseCallback(TrainablePreset("heads"), TrainablePreset("4+"), 2)
    model.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[phases, Snapshot()])

    for stage in range(5):
        assert np.array_equal(kept[2][stage], initial[stage])  # heads only
        moved = not np.array_equal(kept[4][stage], kept[2][stage])
        assert moved == (stage >= 3), stage  # conv4 and conv5 train in phase 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["trainable: heads from step 0", "", "trainable: 4+ from step 2"]


def _c4_model(*overrides: str) -> keras.Model:
    config = load_config(
        Path(__file__).parents[2] / "configs" / "shapes_c4_tiny.yaml",
        ["model.backbone.resnet.width_per_group=4", "model.backbone.resnet.norm=none", *overrides],
    )
    model = build_mask_rcnn(config.model)
    model.build({"images": (None, None, None, 3)})
    return model


@pytest.mark.parametrize("spelling", ["train.trainable=heads", "model.backbone.freeze_at=5"])
def test_heads_only_freezes_conv5_of_a_c4_model(spelling):
    """conv5 of a ResNet-C4 model lives in ``Res5Head``: "the whole backbone frozen" (the
    ``heads`` preset, ``freeze_at: 5``) freezes it too; ``all`` trains it."""
    model = _c4_model(spelling)
    res5 = model.roi_heads.shared_head
    assert len(res5.weights) == 2 * 10 and not res5.trainable_weights  # 10 convs, no norm
    assert not model.backbone.trainable_weights
    assert model.roi_heads.box_head.trainable_weights  # the heads still train
    TrainablePreset("all").apply(model)
    assert len(res5.trainable_weights) == len(res5.weights)
    TrainablePreset("heads").apply(model)
    assert not res5.trainable_weights
    TrainablePreset("5+").apply(model)
    assert len(res5.trainable_weights) == len(res5.weights)
    assert not model.backbone.trainable_weights  # C4: the backbone ends at conv4


def test_heads_first_steps_needs_a_preset_after_the_heads():
    for freeze_at in (1, 5):
        with pytest.raises(ConfigError, match=f"got freeze_at {freeze_at}"):
            tiny_config(
                Path("unused"),
                "train.heads_first_steps=10",
                f"model.backbone.freeze_at={freeze_at}",
            )
    config = tiny_config(Path("unused"), "train.heads_first_steps=10")  # then all (freeze_at 0)
    assert TrainablePreset.freezing(config.model.backbone.freeze_at).name == "all"
