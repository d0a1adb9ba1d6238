"""The shipped experiment files load against the schema and say what they claim."""

from pathlib import Path

import pytest

from kmask.config import load_config
from kmask.training import scaled_learning_rate

_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "name,depth", [("mask_rcnn_r50_fpn_1x_coco.yaml", 50), ("mask_rcnn_r101_fpn_1x_coco.yaml", 101)]
)
def test_coco_configs_have_the_papers_schedule(name, depth):
    config = load_config(_CONFIGS / name)
    assert config.model.num_classes == 80 and config.model.backbone.resnet.depth == depth
    assert config.model.backbone.resnet.norm == "frozen_bn" and config.model.backbone.freeze_at == 2
    assert str(depth) in config.model.backbone.weights
    train = config.train
    assert (train.batch_size, train.max_steps, train.lr_steps) == (16, 90_000, (60_000, 80_000))
    assert scaled_learning_rate(train, train.batch_size) == pytest.approx(0.02)
    assert (train.momentum, train.weight_decay, train.lr_decay_factor) == (0.9, 1e-4, 0.1)
    assert config.data.min_size == (800,) and config.data.max_size == 1333


def test_shapes_tiny_config():
    config = load_config(_CONFIGS / "shapes_tiny.yaml")
    assert config.model.num_classes == 3
    assert config.data.min_size == (128,)
    assert config.train.json_path == "data/shapes/train.json"
    assert config.train.max_steps > max(config.train.lr_steps)


def test_detector_mode_and_resnext_configs():
    faster = load_config(_CONFIGS / "faster_rcnn_r50_fpn_1x_coco.yaml").model
    assert faster.mask_head is None and faster.box_head is not None
    rpn = load_config(_CONFIGS / "rpn_r50_fpn_1x_coco.yaml").model
    assert rpn.box_head is None and rpn.mask_head is None
    resnext = load_config(_CONFIGS / "mask_rcnn_x101_32x8d_fpn_1x_coco.yaml").model.backbone.resnet
    assert (resnext.depth, resnext.groups, resnext.width_per_group) == (101, 32, 8)
    assert not resnext.stride_in_1x1 and not resnext.conv_bias


def test_resnet_c4_configs():
    paper = load_config(_CONFIGS / "mask_rcnn_r50_c4_1x_coco.yaml").model
    assert paper.fpn is None and paper.backbone.out_levels == (4,)
    assert paper.rpn.anchor_sizes == ((32.0, 64.0, 128.0, 256.0, 512.0),)
    # The paper: 7x7 RoIs with conv5 at stride 1, N = 64, 300 test proposals.
    assert (paper.res5_head.pooler.resolution, paper.res5_head.stride) == (7, 1)
    assert paper.roi_heads.batch_size_per_image == 64 and paper.rpn.post_nms_topk_test == 300
    assert paper.box_head.pool == "average" and paper.mask_head.num_conv == 0
    detectron2 = load_config(_CONFIGS / "mask_rcnn_r50_c4_1x_coco_detectron2.yaml").model
    assert (detectron2.res5_head.pooler.resolution, detectron2.res5_head.stride) == (14, 2)
    faster = load_config(_CONFIGS / "faster_rcnn_r50_c4_1x_coco.yaml").model
    assert faster.mask_head is None and faster.res5_head == paper.res5_head
    shapes = load_config(_CONFIGS / "shapes_c4_tiny.yaml").model
    assert shapes.fpn is None and shapes.mask_head.pooler.resolution == 7
