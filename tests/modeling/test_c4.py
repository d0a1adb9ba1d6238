"""The ResNet-C4 detectors (Mask R-CNN figure 3, left): parameters, heads, config, round trip."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.config import ConfigError, load_config
from kmask.layers.image_normalization import ImageNormalization
from kmask.modeling import (
    RPN,
    BoxHead,
    MaskHead,
    MaskRCNN,
    Res5Head,
    ResNet,
    ROIHeads,
    build_mask_rcnn,
)
from kmask.ops.anchors import cell_anchors
from tests.toy_data import fit_one_image

_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _bottleneck_params(c_in: int, width: int, c_out: int, projection: bool, bias: bool) -> int:
    """1x1, 3x3, 1x1 convs (+ 1x1 projection), each followed by a frozen BN (4 per channel)."""
    convs = [(c_in, width, 1), (width, width, 3), (width, c_out, 1)]
    if projection:
        convs.append((c_in, c_out, 1))
    return sum(i * o * k * k + (o if bias else 0) + 4 * o for i, o, k in convs)


def _hand_count_r50_c4(num_classes: int, masks: bool) -> int:
    """Mask / Faster R-CNN R50-C4 counted from the architecture (paper figure 3, left)."""
    total = 7 * 7 * 3 * 64 + 64 + 4 * 64  # stem conv (keras.applications bias) + BN
    c_in = 64
    # conv2..conv5: (blocks, inner width, output channels); conv5 runs in the RoI head.
    for blocks, width, c_out in ((3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)):
        for index in range(blocks):
            total += _bottleneck_params(c_in, width, c_out, index == 0, bias=True)
            c_in = c_out
    anchors = 15  # 5 sizes x 3 ratios on C4
    total += 3 * 3 * 1024 * 1024 + 1024 + (1024 + 1) * anchors + (1024 + 1) * 4 * anchors
    total += (2048 + 1) * (num_classes + 1) + (2048 + 1) * 4 * num_classes  # predictors
    if masks:
        total += 2 * 2 * 2048 * 256 + 256 + (256 + 1) * num_classes  # deconv, 1x1 predictor
    return total


@pytest.mark.parametrize(
    "name, masks",
    [("mask_rcnn_r50_c4_1x_coco.yaml", True), ("mask_rcnn_r50_c4_1x_coco.yaml", False)],
)
def test_parameter_count_matches_a_hand_count(name, masks):
    overrides = ["model.backbone.weights=null"] + ([] if masks else ["model.mask_head=null"])
    config = load_config(_CONFIGS / name, overrides).model
    model = build_mask_rcnn(config)
    model.build({"images": (None, None, None, 3)})
    assert model.count_params() == _hand_count_r50_c4(80, masks)
    assert "conv5_block1_1_conv" not in {layer.name for layer in model.backbone._flatten_layers()}


def test_paper_and_detectron2_heads_give_7x7x2048_maps():
    features = {"C4": tf.random.normal((1, 6, 8, 64))}
    boxes = tf.constant([[[0.0, 0.0, 60.0, 90.0], [10.0, 20.0, 40.0, 50.0]]])
    common = {"norm": "none", "width_per_group": 4, "roi_align_implementation": "tf"}
    paper = Res5Head(7, stride=1, **common)
    detectron2 = Res5Head(14, pooler_sampling_ratio=0, stride=2, **common)
    for head in (paper, detectron2):
        assert tuple(head(features, boxes).shape) == (1, 2, 7, 7, 2048)
        assert head.compute_output_shape({"C4": (1, 6, 8, 64)}, (1, 2, 4)) == (1, 2, 7, 7, 2048)
    # detectron2's first block: stride 2 on the 1x1 (MSRA) of the 14x14 RoI.
    assert paper.blocks[0].stride == 1 and detectron2.blocks[0].stride == 2
    assert [block.name for block in paper.blocks] == [f"conv5_block{i}" for i in (1, 2, 3)]


def test_backbone_up_to_c4_is_the_full_resnet_cut_at_conv4():
    images = tf.random.normal((1, 64, 64, 3))
    full = ResNet(freeze_at=0, width_per_group=8)
    c4 = ResNet(freeze_at=0, width_per_group=8, out_levels=(4,))
    full.build(images.shape)
    c4.build(images.shape)
    weights = {w.path.split("/", 1)[1]: w for w in full.weights}
    for weight in c4.weights:
        weight.assign(weights[weight.path.split("/", 1)[1]])
    assert len(c4.weights) < len(full.weights)
    outputs = c4(images)
    assert set(outputs) == {"C4"} and c4.output_specs()["C4"] == (1024, 16)
    np.testing.assert_allclose(outputs["C4"], full(images)["C4"], atol=1e-5)
    with pytest.raises(ValueError, match="out_levels"):
        ResNet(out_levels=(5, 4))


def test_several_anchor_sizes_on_one_level_are_size_major():
    ratios = (0.5, 1.0, 2.0)
    anchors = cell_anchors((32.0, 64.0), ratios)
    expected = []
    for size in (32.0, 64.0):  # detectron2's order: sizes outer, ratios inner
        for ratio in ratios:
            h, w = size * np.sqrt(ratio), size / np.sqrt(ratio)
            expected.append([-h / 2, -w / 2, h / 2, w / 2])
    np.testing.assert_allclose(anchors, expected, rtol=1e-6)
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    np.testing.assert_allclose(areas, [32.0**2] * 3 + [64.0**2] * 3, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.fpn=null"], "res5_head"),
        (["model.res5_head={}"], "res5_head"),
        (["model.fpn=null", "model.res5_head={}"], "out_levels"),
        (
            ["model.fpn=null", "model.res5_head={}", "model.backbone.out_levels=[4]"],
            "mask_head.pooler.resolution",
        ),
    ],
)
def test_inconsistent_c4_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def _tiny_c4():
    config = load_config(
        _CONFIGS / "shapes_c4_tiny.yaml",
        [
            "model.backbone.width_per_group=4",
            "model.backbone.norm=none",
            "model.roi_align_implementation=tf",
            "model.rpn.pre_nms_topk_test=50",
            "model.rpn.post_nms_topk_test=20",
        ],
    )
    model = build_mask_rcnn(config.model)
    model.build({"images": (None, None, None, 3)})
    return model


def _batch():
    images = tf.random.uniform((2, 64, 96, 3), 0, 255, seed=1)
    features = {"images": images, "image_size": tf.constant([[64, 96], [48, 96]])}
    targets = {
        "gt_boxes": tf.constant([[[8.0, 8.0, 40.0, 50.0], [0, 0, 0, 0]], [[4, 30, 44, 90]] * 2]),
        "gt_classes": tf.constant([[0, -1], [2, 1]]),
        "gt_masks": tf.cast(tf.random.uniform((2, 2, 28, 28), seed=2) > 0.5, tf.uint8),
        "seed": tf.constant([3, 4], tf.int64),
    }
    return features, targets


def test_training_instance_heads_take_the_foreground_slots_of_the_shared_maps():
    """The mask loss of the C4 model is the mask head's loss on the conv5 maps of the first
    ``max_positives`` sampled RoIs (what ``Res5ROIHeads`` reuses from the box branch)."""
    model = _tiny_c4()
    features, targets = _batch()
    losses = model({**features, **targets}, training=True)
    assert set(losses) == set(model.loss_names) and all(
        np.isfinite(float(v)) for v in losses.values()
    )

    heads = model.roi_heads
    images = model.normalizer(features["images"], features["image_size"])
    c4 = model.backbone(images)
    proposals, _ = model.rpn(c4, features["image_size"], training=True)
    sampled = heads.sampler(
        proposals["proposals"],
        proposals["proposal_valid"],
        targets["gt_boxes"],
        targets["gt_classes"],
        seeds=targets["seed"],
    )
    count = heads.sampler.max_positives
    rois = sampled["rois"][:, :count]
    classes = sampled["class_targets"][:, :count] - 1
    expected = heads.instance_heads[0].compute_losses(
        heads.shared_head(c4, rois),
        rois,
        tf.where(classes >= 0, classes, -1),
        sampled["matched_index"][:, :count],
        targets,
    )
    np.testing.assert_allclose(float(losses["loss_mask"]), float(expected["loss_mask"]), rtol=1e-5)


def test_keras_file_round_trip(tmp_path):
    model = _tiny_c4()
    features, _ = _batch()
    outputs = model(features)
    assert outputs["proposals"].shape[1] == 20
    assert tuple(outputs["detection_masks"].shape) == (2, 100, 14, 14)
    path = tmp_path / "c4.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.fpn is None and isinstance(loaded.roi_heads.shared_head, Res5Head)
    again = loaded(features)
    for key, value in outputs.items():
        np.testing.assert_allclose(again[key], value, atol=1e-5, err_msg=key)


@keras.saving.register_keras_serializable(package="kmask_tests")
class TinyC4Backbone(keras.layers.Layer):
    """Stand-in backbone: four strided 3x3 convs to one stride-16 map, ``{"C4"}``."""

    def __init__(self, width: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.convs = [
            keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")
            for _ in range(4)
        ]

    def build(self, images_shape):
        channels = 3
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.width

    def call(self, images):
        x = images
        for conv in self.convs:
            x = conv(x)
        return {"C4": x}

    def compute_output_shape(self, images_shape):
        def down(size):
            return None if size is None else -(-size // 16)

        return {"C4": (images_shape[0], down(images_shape[1]), down(images_shape[2]), self.width)}

    def get_config(self):
        return {**super().get_config(), "width": self.width}


@pytest.mark.slow  # about a minute on 2 cores; keeps the default run near 25 minutes
def test_overfits_one_image():
    """The C4 heads learn: three instances, 400 Adam steps, losses fall 10x, boxes and
    14x14 masks match the ground truth (IoU > 0.7)."""

    def c4_model() -> MaskRCNN:
        pooled = {"pooler_levels": None, "roi_align_implementation": "tf"}
        return MaskRCNN(
            normalizer=ImageNormalization("RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
            backbone=TinyC4Backbone(),
            fpn=None,
            rpn=RPN(
                anchor_sizes=[[16.0, 32.0, 64.0]],
                pre_nms_topk_train=300,
                pre_nms_topk_test=300,
                post_nms_topk_train=100,
                post_nms_topk_test=100,
            ),
            roi_heads=ROIHeads(
                BoxHead(3, pool="average", num_fc=0, pooler_resolution=7, **pooled),
                [MaskHead(3, pooler_resolution=7, num_conv=0, conv_dim=16, **pooled)],
                batch_size_per_image=16,
                shared_head=Res5Head(
                    7, norm="gn", width_per_group=4, roi_align_implementation="tf"
                ),
            ),
        )

    fit = fit_one_image(c4_model)
    assert fit.final["loss"] < fit.initial["loss"] / 10, (fit.initial, fit.final)
    assert fit.predictions["detection_masks"].shape[-2:] == (14, 14)
    print("C4 overfit box IoU", fit.box_ious, "mask IoU", fit.mask_ious)
    assert min(fit.box_ious) > 0.7, fit.box_ious
    assert min(fit.mask_ious) > 0.7, fit.mask_ious


def test_imagenet_weights_fill_the_backbone_and_conv5_in_the_head(tmp_path):
    """``model.backbone.weights`` (a ``backbone.npz`` of ``kmask convert-weights``) fills
    conv1..conv4 of the C4 backbone and conv5 of ``Res5Head``, by layer name."""
    full = ResNet(width_per_group=8)
    full.build((None, None, None, 3))
    rng = np.random.default_rng(0)
    arrays = {
        f"{name}/{index}": rng.normal(size=weight.shape).astype("float32")
        for name, layer in full._weighted_layers().items()
        for index, weight in enumerate(layer.weights)
    }
    np.savez(tmp_path / "backbone.npz", **arrays)
    config = load_config(
        _CONFIGS / "shapes_c4_tiny.yaml",
        [
            "model.backbone.norm=frozen_bn",
            "model.backbone.width_per_group=8",
            f"model.backbone.weights={tmp_path / 'backbone.npz'}",
        ],
    )
    model = build_mask_rcnn(config.model)
    backbone_layers = model.backbone._weighted_layers()
    assert "conv5_block1_1_conv" not in backbone_layers
    np.testing.assert_array_equal(
        backbone_layers["conv4_block6_3_conv"].kernel, arrays["conv4_block6_3_conv/0"]
    )
    blocks = model.roi_heads.shared_head.blocks
    np.testing.assert_array_equal(blocks[0].shortcut_conv.kernel, arrays["conv5_block1_0_conv/0"])
    np.testing.assert_array_equal(blocks[2].conv3.kernel, arrays["conv5_block3_3_conv/0"])
    np.testing.assert_array_equal(blocks[2].norm3.get_weights()[2], arrays["conv5_block3_3_bn/2"])
