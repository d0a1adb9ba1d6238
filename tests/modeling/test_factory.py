"""build_mask_rcnn: the ResNet-50-FPN model of the papers, its size and its configuration."""

import keras
import numpy as np
import pytest

from kmask.config import ConfigError, ModelConfig, load_config
from kmask.modeling import MaskRCNN, build_mask_rcnn

# torchvision's maskrcnn_resnet50_fpn (91 classes counted with background, FrozenBatchNorm2d
# buffers excluded) has 44,401,393 parameters; the public reference figure is 44.4M.
REFERENCE_PARAMETERS = 44.4e6


def _conv(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def _resnet50_convs(bias: bool) -> int:
    """Conv kernels (+ biases) of ResNet-50 v1 up to C5, no fc."""
    total = _conv(7, 3, 64, bias)
    channels = 64
    for filters, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for index in range(blocks):
            if index == 0:
                total += _conv(1, channels, 4 * filters, bias)  # projection shortcut
            total += _conv(1, channels, filters, bias) + _conv(3, filters, filters, bias)
            total += _conv(1, filters, 4 * filters, bias)
            channels = 4 * filters
    return total


def _expected_parameters(scores: int, deltas: int, masks: int, backbone_bias: bool) -> int:
    d = 256
    fpn = sum(_conv(1, c, d) for c in (256, 512, 1024, 2048)) + 4 * _conv(3, d, d)
    rpn = _conv(3, d, d) + _conv(1, d, 3) + _conv(1, d, 12)
    box = (7 * 7 * d * 1024 + 1024) + (1024 * 1024 + 1024)
    box += (1024 * scores + scores) + (1024 * deltas + deltas)
    mask = 4 * _conv(3, d, d) + (2 * 2 * d * d + d) + _conv(1, d, masks)
    return _resnet50_convs(backbone_bias) + fpn + rpn + box + mask


def _parameters_without_normalization(model: keras.Model) -> int:
    norm_types = (keras.layers.BatchNormalization, keras.layers.GroupNormalization)
    excluded = set()
    for layer in model._flatten_layers(include_self=True):
        if isinstance(layer, norm_types) or type(layer).__name__ == "FrozenBatchNorm":
            excluded.update(id(v) for v in layer.weights)
    return sum(int(np.prod(v.shape)) for v in model.weights if id(v) not in excluded)


@pytest.fixture(scope="module")
def r50_model() -> MaskRCNN:
    model = build_mask_rcnn(ModelConfig(num_classes=80))
    model.build({"images": (None, None, None, 3)})
    return model


def test_parameter_count_matches_the_reference(r50_model):
    """What is counted: every conv / fc kernel and bias of the backbone (frozen stem and res2
    included, conv biases as in keras.applications: 26,560), FPN, RPN, box head (81 scores,
    320 deltas) and mask head (80 masks); normalization variables (frozen BN
    gamma/beta/mean/variance, 106,240 values) are not parameters here, as in the reference.
    The 80-class heads have 58,177 fewer values than the reference's 91-class ones."""
    count = _parameters_without_normalization(r50_model)
    # The formula reproduces torchvision's published count (91 classes with background:
    # 91 scores, 4 x 91 deltas, 91 masks; bias-free backbone convs) ...
    assert _expected_parameters(91, 4 * 91, 91, backbone_bias=False) == 44_401_393
    # ... and kmask's: 81 scores, 4 x 80 deltas, 80 masks, backbone conv biases.
    assert count == _expected_parameters(81, 4 * 80, 80, backbone_bias=True) == 44_369_776
    assert abs(count - REFERENCE_PARAMETERS) / REFERENCE_PARAMETERS < 0.01
    # Frozen: stem + res2 (freeze_at=2) and the frozen BN statistics are not trainable.
    frozen = {v.path for v in r50_model.non_trainable_variables}
    assert any("conv1_conv" in p for p in frozen) and any("conv2_block3" in p for p in frozen)
    assert not any("conv3_block1_1_conv" in p and "kernel" in p for p in frozen)


TORCHVISION_STYLE = [
    "model.num_classes=90",
    "model.input={channel_order: RGB, pixel_scale: 0.00392156862745098, "
    "pixel_mean: [0.485, 0.456, 0.406], pixel_std: [0.229, 0.224, 0.225]}",
    "model.backbone={stride_in_1x1: false, conv_bias: false, norm_epsilon: 0.0}",
    "model.rpn={anchor_offset: 0.0, anchor_rounding: true}",
    "model.box_head={predict_background: true, pooler_aligned: false}",
    "model.mask_head={predict_background: true, pooler_aligned: false}",
]


def test_torchvision_style_configuration_has_exactly_torchvision_parameter_count():
    """torchvision's maskrcnn_resnet50_fpn: 44,401,393 parameters (conv / fc kernels and
    biases; its FrozenBatchNorm2d values are buffers, not parameters)."""
    model = build_mask_rcnn(load_config(overrides=TORCHVISION_STYLE).model)
    model.build({"images": (None, None, None, 3)})
    assert _parameters_without_normalization(model) == 44_401_393
    stage2 = model.backbone.blocks[3]  # conv3_block1: the stride sits on the 3x3 conv
    assert stage2.conv1.strides == (1, 1) and stage2.conv2.strides == (2, 2)
    assert stage2.conv1.bias is None


def test_torchvision_v2_configuration_has_exactly_its_parameter_count():
    """torchvision's maskrcnn_resnet50_fpn_v2 (box 47.4 / mask 41.8): 46,359,409 parameters.
    It normalizes the FPN and the heads (BatchNorm2d, whose weight and bias are parameters
    and whose running statistics are buffers), has a 2-conv RPN head, a 4-conv + 1-fc box
    head and bias-free convolutions before every norm."""
    overrides = [
        *TORCHVISION_STYLE,
        "model.fpn.norm=bn",
        "model.rpn={num_conv: 2, anchor_offset: 0.0, anchor_rounding: true}",
        "model.box_head={num_conv: 4, norm: bn, num_fc: 1, predict_background: true, "
        "pooler_aligned: false}",
        "model.mask_head={norm: bn, predict_background: true, pooler_aligned: false}",
    ]
    model = build_mask_rcnn(load_config(overrides=overrides).model)
    model.build({"images": (None, None, None, 3)})
    statistics = ("moving_mean", "moving_variance")
    count = sum(int(np.prod(v.shape)) for v in model.weights if not v.path.endswith(statistics))
    assert count == 46_359_409


def test_r50_inference_and_save_load(r50_model, tmp_path):
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    features = {"images": images, "image_size": np.array([[64, 90]], np.int32)}
    out = r50_model(features)
    assert out["detection_boxes"].shape == (1, 100, 4)
    assert out["detection_masks"].shape == (1, 100, 28, 28)
    boxes = out["detection_boxes"].numpy()
    assert (boxes[..., 2] <= 64).all() and (boxes[..., 3] <= 90).all()
    r50_model.save(tmp_path / "r50.keras")
    loaded = keras.models.load_model(tmp_path / "r50.keras")
    again = loaded(features)
    for key, value in out.items():
        np.testing.assert_array_equal(again[key].numpy(), value.numpy(), err_msg=key)


def test_config_reaches_the_components():
    config = load_config(
        overrides=[
            "model.num_classes=7",
            "model.rpn.nms_threshold=0.6",
            "model.rpn.post_nms_topk_test=300",
            "model.rpn.anchor_offset=0.0",
            "model.roi_heads.batch_size_per_image=128",
            "model.box_head.detections_per_image=50",
            "model.box_head.fc_dim=512",
            "model.box_head.pooler_sampling_ratio=0",
            "model.mask_head.num_conv=2",
            "model.mask_head.loss_weight=2.0",
            "model.mask_head.pooler_aligned=false",
            "model.backbone.depth=101",
            "model.roi_align_implementation=tf",
        ]
    ).model
    model = build_mask_rcnn(config)
    box_head, (mask_head,) = model.roi_heads.box_head, model.roi_heads.instance_heads
    assert model.backbone.depth == 101
    assert model.rpn.proposal_generator.nms_threshold == 0.6
    assert model.rpn.proposal_generator.post_nms_topk_test == 300
    assert model.rpn.anchor_generator.offset == 0.0
    assert model.roi_heads.sampler.batch_size_per_image == 128
    assert box_head.postprocess.detections_per_image == 50
    assert box_head.fcs[0].units == 512 and box_head.num_classes == 7
    assert box_head.pooler.sampling_ratio == 0 and box_head.pooler.aligned
    assert mask_head.convs.num_conv == 2 and mask_head.loss_weight == 2.0
    assert not mask_head.pooler.aligned and mask_head.pooler.implementation == "tf"
    # The model's config carries every field as the layers' constructor arguments.
    rpn_config = model.get_config()["rpn"]["config"]
    assert rpn_config["nms_threshold"] == 0.6 and rpn_config["smooth_l1_beta"] == pytest.approx(
        1 / 9
    )
    defaults = ModelConfig()
    assert defaults.rpn.anchor_sizes == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert defaults.rpn.batch_size_per_image == 256 and defaults.rpn.positive_fraction == 0.5
    assert defaults.box_head.box_weights == (10.0, 10.0, 5.0, 5.0)
    assert (defaults.rpn.pre_nms_topk_train, defaults.rpn.post_nms_topk_train) == (2000, 2000)
    assert (defaults.rpn.pre_nms_topk_test, defaults.rpn.post_nms_topk_test) == (1000, 1000)


def test_detector_modes_from_config():
    faster = build_mask_rcnn(load_config(overrides=["model.mask_head=null"]).model)
    assert faster.roi_heads.instance_heads == [] and "loss_mask" not in faster.loss_names
    rpn_only = load_config(overrides=["model.box_head=null", "model.mask_head=null"]).model
    assert build_mask_rcnn(rpn_only).roi_heads is None
    with pytest.raises(ConfigError, match="mask_head needs model.box_head"):
        load_config(overrides=["model.box_head=null"])


def test_inconsistent_configs_are_rejected():
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_mask_rcnn(load_config(overrides=["model.rpn.anchor_sizes=[32,64]"]).model)
    with pytest.raises(ValueError, match="pool from P2..P5"):
        build_mask_rcnn(
            load_config(
                overrides=["model.fpn.min_level=3", "model.rpn.anchor_sizes=[64,128,256,512]"]
            ).model
        )
    with pytest.raises(ConfigError, match="unknown"):
        load_config(overrides=["model.rpn.no_such_field=1"])
