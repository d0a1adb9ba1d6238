"""``train.init_class_map``: the class-dependent units of each mapped class copied from its
source class (checked against row copies written out by hand), unmapped classes keep their
initialization, bad maps refused; the Cityscapes configs load and the COCO-initialized one
has the architecture of the converted detectron2 model it starts from."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from kmask.config import ConfigError, config_from_dict, load_config
from kmask.convert.converted_run import write_converted_run
from kmask.convert.detectron2_converter import Detectron2Converter
from kmask.modeling import build_mask_rcnn
from kmask.training import WeightTransfer, WeightTransferError
from kmask.training.weight_transfer import weight_names
from tests.toy_data import tiny_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class _Heads(keras.Model):
    """The class-dependent layers under the names of a Mask R-CNN's heads (and one shared
    layer), with random biases so that copies show."""

    def __init__(self, num_classes: int, background: bool) -> None:
        super().__init__()
        random = keras.initializers.RandomNormal(stddev=1.0)
        features = keras.Input((6,))
        hidden = keras.layers.Dense(5, name="fc1", bias_initializer=random)(features)
        outputs = [
            keras.layers.Dense(num_classes + 1, name="cls_score", bias_initializer=random)(hidden),
            keras.layers.Dense(
                4 * (num_classes + background), name="bbox_pred", bias_initializer=random
            )(hidden),
        ]
        self.box_head = keras.Model(features, outputs, name="box_head")
        maps = keras.Input((4, 4, 3))
        predictor = keras.layers.Conv2D(
            num_classes + background, 1, name="predictor", bias_initializer=random
        )(maps)
        self.mask_head = keras.Model(maps, predictor, name="mask_head")


def _arrays(model: keras.Model) -> dict[str, np.ndarray]:
    return {name: np.array(v.numpy()) for name, v in weight_names(model).items()}


def _heads(num_classes: int, background: bool, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return _Heads(num_classes, background)


def test_rows_of_mapped_classes_are_copied_and_the_others_kept():
    source_model = _heads(3, background=False, seed=0)  # classes a, b, c
    target = _heads(4, background=False, seed=1)  # classes x, b2, a2, new
    source, before = _arrays(source_model), _arrays(target)
    transfer = WeightTransfer.from_model(source_model, "src", class_names=("a", "b", "c"))
    class_rows = transfer.class_rows(("x", "b2", "a2", "new"), {"x": "c", "b2": "b", "a2": "a"})
    assert class_rows == (2, 1, 0, None)
    rows = transfer.load_into(target, class_rows=class_rows)
    after = _arrays(target)

    for suffix in ("kernel", "bias"):
        # cls_score: background, then x <- c, b2 <- b, a2 <- a, new kept.
        score, old = source[f"box_head/cls_score/{suffix}"], before[f"box_head/cls_score/{suffix}"]
        expected = np.stack([score[..., 0], score[..., 3], score[..., 2], score[..., 1]], -1)
        expected = np.concatenate([expected, old[..., 4:5]], -1)
        np.testing.assert_array_equal(after[f"box_head/cls_score/{suffix}"], expected)
        # bbox_pred: 4 deltas per class, no background slot.
        box, old = source[f"box_head/bbox_pred/{suffix}"], before[f"box_head/bbox_pred/{suffix}"]
        expected = np.concatenate(
            [box[..., 8:12], box[..., 4:8], box[..., 0:4], old[..., 12:16]], -1
        )
        np.testing.assert_array_equal(after[f"box_head/bbox_pred/{suffix}"], expected)
        # mask predictor: one map per class.
        mask, old = source[f"mask_head/predictor/{suffix}"], before[f"mask_head/predictor/{suffix}"]
        expected = np.stack([mask[..., 2], mask[..., 1], mask[..., 0], old[..., 3]], -1)
        np.testing.assert_array_equal(after[f"mask_head/predictor/{suffix}"], expected)
    np.testing.assert_array_equal(after["box_head/fc1/kernel"], source["box_head/fc1/kernel"])

    statuses = {name: (status, why) for name, status, why in rows}
    assert statuses["box_head/fc1/kernel"] == ("loaded", "")
    assert statuses["mask_head/predictor/bias"] == ("class rows", "3 of 4 classes from the source")
    table = WeightTransfer.format_table(rows)
    assert table.splitlines()[0].split()[-2:] == ["class", "rows"]


def test_background_slots_of_a_torchvision_layout_source_are_skipped():
    """A source with background deltas and mask (``predict_background``) into a target
    without: class j of the source sits one slot further."""
    source_model = _heads(2, background=True, seed=0)  # classes a, b (+ background slot)
    target = _heads(2, background=False, seed=1)  # classes b2, a2
    source = _arrays(source_model)
    transfer = WeightTransfer.from_model(source_model, "src")  # 2 classes from cls_score
    transfer.load_into(target, class_rows=(1, 0))
    after = _arrays(target)
    box = source["box_head/bbox_pred/kernel"]  # background 0:4, a 4:8, b 8:12
    np.testing.assert_array_equal(
        after["box_head/bbox_pred/kernel"], np.concatenate([box[:, 8:12], box[:, 4:8]], -1)
    )
    mask = source["mask_head/predictor/bias"]  # background, a, b
    np.testing.assert_array_equal(after["mask_head/predictor/bias"], mask[[2, 1]])
    score = source["box_head/cls_score/bias"]
    np.testing.assert_array_equal(after["box_head/cls_score/bias"], score[[0, 2, 1]])


def test_bad_maps_are_refused_naming_the_classes():
    transfer = WeightTransfer({}, "runs/coco", class_names=("person", "car"))
    with pytest.raises(WeightTransferError, match="rider not among the training data's"):
        transfer.class_rows(("person",), {"rider": "person"})
    with pytest.raises(WeightTransferError, match="bike not among the classes of runs/coco"):
        transfer.class_rows(("person", "bicycle"), {"bicycle": "bike"})
    with pytest.raises(WeightTransferError, match="class names of src are unknown"):
        WeightTransfer({}, "src").class_rows(("person",), {"person": "person"})
    source_model = _heads(3, background=False, seed=0)
    target = _heads(2, background=False, seed=1)
    before = _arrays(target)
    with pytest.raises(
        WeightTransferError,
        match=r"cls_score/kernel: model \(5, 3\) does not hold 1 unit\(s\) for each of 3 classes",
    ):
        WeightTransfer.from_model(source_model).load_into(target, class_rows=(0, None, 1))
    assert all(np.array_equal(a, before[k]) for k, a in _arrays(target).items())


def test_class_map_config_field():
    config = load_config(None, ["train.init_class_map={person: person, car: auto}"])
    assert config.train.init_class_map == {"person": "person", "car": "auto"}
    with pytest.raises(ConfigError, match="train.init_class_map: expected a mapping"):
        load_config(None, ["train.init_class_map=[person]"])
    with pytest.raises(ConfigError, match=r"train.init_class_map.car: expected str"):
        load_config(None, ["train.init_class_map={car: 3}"])
    with pytest.raises(ConfigError, match="expected non-empty class names"):
        load_config(None, ["train.init_class_map={car: ''}"])


def test_cityscapes_configs():
    scratch = load_config(CONFIGS / "mask_rcnn_r50_fpn_cityscapes.yaml")
    coco = load_config(CONFIGS / "mask_rcnn_r50_fpn_cityscapes_from_coco.yaml")
    for config in (scratch, coco):
        assert config.model.num_classes == 8
        assert (config.data.min_size, config.data.min_size_sampling) == ((800, 1024), "range")
        assert config.train.batch_size == 8 and config.train.base_learning_rate == 0.01
    assert (scratch.train.max_steps, scratch.train.lr_steps) == (24000, (18000,))
    assert (coco.train.max_steps, coco.train.lr_steps) == (4000, (3000,))
    cityscapes = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert set(coco.train.init_class_map) == set(cityscapes) - {"rider"}
    assert all(name == coco.train.init_class_map[name] for name in coco.train.init_class_map)
    # The model of the converted detectron2 checkpoint it starts from, with 8 classes.
    converted = Detectron2Converter.ARCHITECTURES["mask_rcnn_R_50_FPN_1x"]
    expected = config_from_dict({"model": {**converted["model"], "num_classes": 8}}).model
    assert coco.model == expected


def test_a_run_directory_gives_its_class_names_and_a_mask_rcnn_maps_its_rows(tmp_path):
    keras.utils.set_random_seed(0)
    source_model = build_mask_rcnn(tiny_config(Path("unused")).model)  # 3 classes
    source_model.build({"images": (None, None, None, 3)})
    categories = [{"id": 7, "name": "car"}, {"id": 8, "name": "person"}, {"id": 9, "name": "bus"}]
    run = write_converted_run(
        tmp_path / "run", tiny_config(Path("unused")), source_model, categories
    )
    transfer = WeightTransfer.from_path(run)
    assert transfer.class_names == ("car", "person", "bus")
    class_rows = transfer.class_rows(("person", "rider", "bus"), {"person": "person", "bus": "bus"})
    assert class_rows == (1, None, 2)

    keras.utils.set_random_seed(1)
    target = build_mask_rcnn(tiny_config(Path("unused")).model)
    target.build({"images": (None, None, None, 3)})
    before, source = _arrays(target), _arrays(source_model)
    rows = transfer.load_into(target, class_rows=class_rows)
    after = _arrays(target)
    mapped = sorted(name for name, status, _ in rows if status == "class rows")
    assert [name.split("/", 1)[1] for name in mapped] == [
        "box_head/bbox_pred/bias",
        "box_head/bbox_pred/kernel",
        "box_head/cls_score/bias",
        "box_head/cls_score/kernel",
        "mask_head/predictor/bias",
        "mask_head/predictor/kernel",
    ]
    name = "roi_heads/box_head/cls_score/kernel"
    expected = np.stack(
        [source[name][:, 0], source[name][:, 2], before[name][:, 2], source[name][:, 3]], -1
    )
    np.testing.assert_array_equal(after[name], expected)
    name = "roi_heads/mask_head/predictor/bias"
    np.testing.assert_array_equal(after[name], [source[name][1], before[name][1], source[name][2]])
    name = "backbone/conv1_conv/kernel"
    np.testing.assert_array_equal(after[name], source[name])
