"""ResNet backbone: keras.applications equivalence and weight files, layout variants against a
PyTorch-semantics NumPy reference, published parameter counts, freezing, norms, config."""

import math
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from kmask.layers import FrozenBatchNorm
from kmask.modeling.backbones import ResNet
from tests.keras_harness import assert_mixed_precision, assert_round_trip

STAGE_OUTPUTS = {
    50: ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    101: ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
}
APPLICATIONS = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}
# Blocks per stage from He et al. 2016, Table 1 (written here independently of the code).
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
LEVELS = ("C2", "C3", "C4", "C5")
# keras.applications' epsilon, so that loading their weights reproduces them exactly.
APPLICATIONS_EPSILON = 1.001e-5
IMAGE = np.random.default_rng(0).uniform(0.0, 255.0, (1, 64, 64, 3)).astype("float32")
# The caller normalizes: keras.applications' "caffe" preprocessing (RGB -> BGR, minus mean).
NORMALIZED = keras.applications.resnet.preprocess_input(IMAGE.copy())


def _random_applications_model(depth: int) -> keras.Model:
    """A keras.applications ResNet (no top) with random kernels, biases and BN statistics."""
    model = APPLICATIONS[depth](weights=None, include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(depth)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0.0, 0.2, channels),
                    rng.normal(0.0, 0.2, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )
        elif isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape)])
    return model


def _stage_outputs(model: keras.Model, depth: int) -> list[np.ndarray]:
    extractor = keras.Model(model.input, [model.get_layer(n).output for n in STAGE_OUTPUTS[depth]])
    return [keras.ops.convert_to_numpy(y) for y in extractor(NORMALIZED)]


def _write_keras2_h5(model: keras.Model, path: Path, with_top: bool) -> None:
    """Writes ``model``'s weights in the legacy (Keras 2) ``.h5`` format of the download files.

    ``with_top`` appends the ``avg_pool`` and ``predictions`` layers of the include_top file.
    """
    layers = [(layer.name, layer.get_weights()) for layer in model.layers]
    if with_top:
        rng = np.random.default_rng(1)
        layers += [
            ("avg_pool", []),
            ("predictions", [rng.normal(size=(2048, 1000)), np.zeros(1000)]),
        ]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name, _ in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name, values in layers:
            group = f.create_group(name)
            suffixes = (
                ("kernel", "bias")
                if len(values) == 2
                else ("gamma", "beta", "moving_mean", "moving_variance")
            )
            names = [f"{name}/{suffix}:0" for suffix in suffixes[: len(values)]]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight_name, value in zip(names, values, strict=True):
                group.create_dataset(weight_name, data=np.asarray(value, "float32"))


def _assert_features_close(kmask_features: dict, expected: list, atol: float = 1e-4) -> None:
    for level, reference in zip(LEVELS, expected, strict=True):
        actual = keras.ops.convert_to_numpy(kmask_features[level])
        assert actual.shape == reference.shape, level
        scale = np.abs(reference).max()
        assert scale > 0, level
        np.testing.assert_allclose(actual, reference, rtol=0, atol=atol * scale, err_msg=level)


def _layers_by_name(backbone: ResNet) -> dict:
    return {layer.name: layer for layer in backbone._flatten_layers()}


@pytest.fixture(scope="module")
def resnet50_files(tmp_path_factory):
    """A random keras.applications ResNet50, its stage outputs and its weights in 2 formats."""
    folder = tmp_path_factory.mktemp("resnet50")
    model = _random_applications_model(50)
    keras3_file = folder / "resnet50_notop.weights.h5"
    model.save_weights(keras3_file)
    legacy_file = folder / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    _write_keras2_h5(model, legacy_file, with_top=True)
    return {
        "expected": _stage_outputs(model, 50),
        "num_params": model.count_params(),
        "keras3": keras3_file,
        "legacy_top": legacy_file,
    }


@pytest.fixture(scope="module")
def resnet101_file(tmp_path_factory):
    """A random keras.applications ResNet101's weights file and stage outputs."""
    model = _random_applications_model(101)
    path = tmp_path_factory.mktemp("resnet101") / "resnet101_notop.weights.h5"
    model.save_weights(path)
    return {"expected": _stage_outputs(model, 101), "path": path}


# --- keras.applications weights (the caller normalizes) ------------------------------------


def test_resnet50_keras3_weights_file_matches_keras_applications(resnet50_files):
    backbone = ResNet(
        depth=50, norm_epsilon=APPLICATIONS_EPSILON, weights=str(resnet50_files["keras3"])
    )
    _assert_features_close(backbone(NORMALIZED), resnet50_files["expected"])
    assert backbone.count_params() == resnet50_files["num_params"]
    # The backbone does not normalize: raw pixels give other features.
    raw = keras.ops.convert_to_numpy(backbone(IMAGE)["C5"])
    assert np.abs(raw - resnet50_files["expected"][3]).max() > 0.1 * np.abs(raw).max()


def test_resnet50_legacy_h5_with_top_matches_keras_applications(resnet50_files):
    backbone = ResNet(
        depth=50, norm_epsilon=APPLICATIONS_EPSILON, weights=str(resnet50_files["legacy_top"])
    )
    _assert_features_close(backbone(NORMALIZED), resnet50_files["expected"])


def test_resnet101_weights_file_matches_keras_applications(resnet101_file):
    backbone = ResNet(
        depth=101, norm_epsilon=APPLICATIONS_EPSILON, weights=str(resnet101_file["path"])
    )
    _assert_features_close(backbone(NORMALIZED), resnet101_file["expected"])


def test_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        ResNet(weights=str(path))


def test_weights_file_that_does_not_fit_is_named(resnet101_file, tmp_path):
    with pytest.raises(ValueError, match="resnet101_notop.weights.h5"):
        ResNet(depth=50, weights=str(resnet101_file["path"]))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="garbage.h5"):
        ResNet(depth=50, weights=str(garbage))


@pytest.mark.parametrize(
    "layout",
    [
        {"norm": "gn"},
        {"norm": "bn"},
        {"conv_bias": False},
        {"stride_in_1x1": False},
        {"groups": 32, "width_per_group": 4},
        {"width_per_group": 128},
    ],
)
def test_weights_rejected_for_other_layouts(resnet50_files, layout):
    with pytest.raises(ValueError, match="weights") as error:
        ResNet(weights=str(resnet50_files["keras3"]), **layout)
    for key in layout:
        assert key in str(error.value)


def test_weights_must_be_a_string_path(resnet50_files):
    with pytest.raises(TypeError, match="str"):
        ResNet(weights=resnet50_files["keras3"])


@pytest.mark.parametrize(
    "bad",
    [
        {"depth": 34},
        {"norm": "group_norm"},  # renamed "gn"
        {"norm": "batch_norm"},
        {"freeze_at": 6},
        {"norm_epsilon": -1.0},
        {"groups": 0},
        {"width_per_group": 0},
    ],
)
def test_invalid_arguments(bad):
    with pytest.raises(ValueError):
        ResNet(**bad)


# --- layout variants -------------------------------------------------------------------


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_stride_placement(stride_in_1x1):
    layers = _layers_by_name(ResNet(stride_in_1x1=stride_in_1x1))
    for stage, count in zip(range(2, 6), BLOCKS[50], strict=True):
        for block in range(1, count + 1):
            stride = 2 if stage > 2 and block == 1 else 1
            strides = {
                index: layers[f"conv{stage}_block{block}_{index}_conv"].strides[0]
                for index in (1, 2, 3)
            }
            expected = {1: stride, 2: 1, 3: 1} if stride_in_1x1 else {1: 1, 2: stride, 3: 1}
            assert strides == expected, (stage, block)
            if block == 1:  # the projection shortcut is strided in both layouts
                assert layers[f"conv{stage}_block1_0_conv"].strides[0] == stride


def test_conv_bias_false_leaves_no_biases():
    backbone = ResNet(conv_bias=False, freeze_at=0)
    backbone.build((None, None, None, 3))
    assert not any(v.path.endswith("bias") for v in backbone.weights)
    # FrozenBatchNorm has no trainable weights: only the 53 conv kernels train.
    assert len(backbone.trainable_weights) == 53
    assert all(v.path.endswith("kernel") for v in backbone.trainable_weights)


def _conv(x, kernel, bias, stride, padding, groups):
    """PyTorch ``conv2d`` semantics (symmetric zero padding, grouped) in NumPy, NHWC/HWIO."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    size = kernel.shape[0]
    windows = sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    batch, height, width, channels = windows.shape[:4]
    out = kernel.shape[-1]
    windows = windows.reshape(batch, height, width, groups, channels // groups, size, size)
    kernel = kernel.reshape(size, size, channels // groups, groups, out // groups)
    y = np.einsum("bhwgcij,ijcgo->bhwgo", windows, kernel, optimize=True)
    y = y.reshape(batch, height, width, out)
    return y if bias is None else y + bias


def _reference_resnet(image, layers, depth, stride_in_1x1, groups, epsilon):
    """A ResNet forward pass written from the papers / torchvision's definition, in NumPy."""

    def conv_norm(x, name, stride=1, padding=0, groups=1):
        conv = layers[f"{name}_conv"]
        weights = [np.asarray(w, "float64") for w in conv.get_weights()]
        y = _conv(x, weights[0], weights[1] if len(weights) > 1 else None, stride, padding, groups)
        gamma, beta, mean, variance = [
            np.asarray(w, "float64") for w in layers[f"{name}_bn"].get_weights()
        ]
        return (y - mean) / np.sqrt(variance + epsilon) * gamma + beta

    relu = lambda x: np.maximum(x, 0.0)
    x = relu(conv_norm(image.astype("float64"), "conv1", stride=2, padding=3))
    # MaxPool2d(3, stride=2, padding=1): PyTorch pads with -inf.
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    x = sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))
    outputs = []
    for stage, count in zip(range(2, 6), BLOCKS[depth], strict=True):
        for block in range(1, count + 1):
            name = f"conv{stage}_block{block}"
            stride = 2 if stage > 2 and block == 1 else 1
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            y = relu(conv_norm(x, f"{name}_1", stride=s1))
            y = relu(conv_norm(y, f"{name}_2", stride=s3, padding=1, groups=groups))
            y = conv_norm(y, f"{name}_3")
            shortcut = conv_norm(x, f"{name}_0", stride=stride) if block == 1 else x
            x = relu(y + shortcut)
        outputs.append(x)
    return outputs


def _randomize(backbone, seed):
    """Random kernels (He init), biases and frozen-BN statistics, as a trained net has."""
    rng = np.random.default_rng(seed)
    for layer in backbone._flatten_layers():
        if isinstance(layer, FrozenBatchNorm):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0.0, 0.2, channels),
                    rng.normal(0.0, 0.2, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape)])


@pytest.mark.parametrize(
    ("stride_in_1x1", "conv_bias", "groups", "width_per_group", "epsilon"),
    [
        (False, False, 32, 4, 0.0),  # torchvision ResNeXt-50 32x4d, COCO-weights epsilon
        (False, False, 1, 64, 0.0),  # torchvision ResNet-50 v1.5
        (True, False, 1, 64, 1e-5),  # detectron2 MSRA R-50
    ],
)
def test_layouts_match_a_pytorch_semantics_reference(
    stride_in_1x1, conv_bias, groups, width_per_group, epsilon
):
    """Odd image sizes: a strided 3x3 pads 1 pixel on every side, as PyTorch does."""
    image = np.random.default_rng(3).normal(size=(1, 37, 45, 3)).astype("float32")
    backbone = ResNet(
        stride_in_1x1=stride_in_1x1,
        conv_bias=conv_bias,
        groups=groups,
        width_per_group=width_per_group,
        norm_epsilon=epsilon,
    )
    backbone.build(image.shape)
    _randomize(backbone, seed=groups)
    expected = _reference_resnet(
        image, _layers_by_name(backbone), 50, stride_in_1x1, groups, epsilon
    )
    _assert_features_close(backbone(image), expected)


# --- parameter counts --------------------------------------------------------------------


def _architecture_counts(depth, groups=1, width_per_group=64):
    """(conv kernel parameters, normalized channels) from the architecture definition."""
    kernels, channels = 7 * 7 * 3 * 64, 64  # stem conv + its norm
    in_channels = 64
    for stage, count in enumerate(BLOCKS[depth]):
        width, out = groups * width_per_group * 2**stage, 256 * 2**stage
        for block in range(count):
            kernels += in_channels * width + 3 * 3 * width // groups * width + width * out
            channels += width + width + out
            if block == 0:
                kernels += in_channels * out
                channels += out
            in_channels = out
    return kernels, channels


def _model_counts(backbone):
    kernels = biases = channels = 0
    for layer in backbone._flatten_layers():
        if isinstance(layer, keras.layers.Conv2D):
            kernels += int(np.prod(layer.kernel.shape))
            biases += int(np.prod(layer.bias.shape)) if layer.use_bias else 0
        elif isinstance(layer, FrozenBatchNorm):
            channels += layer.gamma.shape[0]
    return kernels, biases, channels


FC = 2048 * 1000 + 1000


@pytest.mark.parametrize(
    ("arguments", "torchvision_total"),
    [
        ({"depth": 50}, 25_557_032),  # torchvision resnet50
        ({"depth": 101}, 44_549_160),  # resnet101
        ({"depth": 152}, 60_192_808),  # resnet152
        ({"depth": 101, "groups": 32, "width_per_group": 8}, 88_791_336),  # resnext101_32x8d
    ],
)
def test_parameter_counts_match_torchvision(arguments, torchvision_total):
    """torchvision's totals include the fc layer and a weight and bias per BN channel."""
    backbone = ResNet(conv_bias=False, stride_in_1x1=False, **arguments)
    backbone.build((None, None, None, 3))
    kernels, biases, channels = _model_counts(backbone)
    assert (kernels, channels) == _architecture_counts(**arguments)
    assert biases == 0
    assert kernels + 2 * channels + FC == torchvision_total
    # FrozenBatchNorm keeps 4 vectors per channel (gamma, beta, mean, variance).
    assert backbone.count_params() == kernels + 4 * channels


def test_keras_applications_layout_parameter_count(resnet50_files):
    backbone = ResNet()
    backbone.build((None, None, None, 3))
    kernels, biases, channels = _model_counts(backbone)
    assert biases == channels  # one bias per conv output channel, each conv normalized
    assert backbone.count_params() == resnet50_files["num_params"] == 23_587_712


# --- freezing, norms, shapes -------------------------------------------------------------


def _stage_of(layer_name: str) -> int:
    return 1 if layer_name.startswith("conv1") else int(layer_name[4])


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_sets_trainability_by_stage(freeze_at):
    backbone = ResNet(freeze_at=freeze_at, norm="gn")
    backbone.build((None, None, None, 3))
    for variable in backbone.weights:
        stage = _stage_of(variable.path.split("/")[-2])
        assert variable.trainable == (stage > freeze_at), variable.path


def test_frozen_batch_norm_never_trains():
    frozen_bn = ResNet(freeze_at=0)
    frozen_bn.build((None, None, None, 3))
    assert all("_conv/" in v.path for v in frozen_bn.trainable_weights)
    assert len(frozen_bn.trainable_weights) == 2 * 53  # kernel + bias of all 53 convs


def test_group_norm_variant_builds_and_runs():
    backbone = ResNet(norm="gn", freeze_at=0)
    features = backbone(NORMALIZED[:, :32, :32])
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "C2": (1, 8, 8, 256),
        "C3": (1, 4, 4, 512),
        "C4": (1, 2, 2, 1024),
        "C5": (1, 1, 1, 2048),
    }
    assert all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in features.values())
    layers = backbone._flatten_layers()
    norms = [layer for layer in layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert len(norms) == 53 and all(n.groups == 32 and n.name.endswith("_gn") for n in norms)
    assert not any(isinstance(layer, FrozenBatchNorm) for layer in layers)


def test_no_norm_variant_has_no_norm_layers():
    backbone = ResNet(norm="none")
    features = backbone(NORMALIZED[:, :32, :32])
    assert tuple(features["C5"].shape) == (1, 1, 1, 2048)
    assert not any(layer.name.endswith(("_bn", "_gn")) for layer in backbone._flatten_layers())


def test_batch_norm_uses_batch_statistics_in_training_except_in_frozen_stages():
    image = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    for freeze_at, changes in ((0, True), (5, False)):
        backbone = ResNet(norm="bn", freeze_at=freeze_at)
        train = keras.ops.convert_to_numpy(backbone(image, training=True)["C5"])
        infer = keras.ops.convert_to_numpy(backbone(image, training=False)["C5"])
        assert (np.abs(train - infer).max() > 1e-3) == changes, freeze_at


@pytest.mark.parametrize(("depth", "height", "width"), [(50, 64, 64), (50, 33, 47), (101, 33, 47)])
def test_output_shapes_and_strides(depth, height, width):
    backbone = ResNet(depth=depth)
    features = backbone(np.zeros((2, height, width, 3), "float32"))
    expected = backbone.compute_output_shape((2, height, width, 3))
    for level, stride, channels in zip(LEVELS, (4, 8, 16, 32), (256, 512, 1024, 2048), strict=True):
        shape = (2, math.ceil(height / stride), math.ceil(width / stride), channels)
        assert tuple(features[level].shape) == shape == expected[level]
    symbolic = backbone(keras.Input((None, None, 3)))
    assert {k: tuple(v.shape) for k, v in symbolic.items()} == {
        k: (None, None, None, c) for k, c in zip(LEVELS, (256, 512, 1024, 2048), strict=True)
    }


def test_resnet152_shape_inference():
    backbone = ResNet(depth=152)
    symbolic = backbone(keras.Input((64, 96, 3), batch_size=2))
    assert {k: tuple(v.shape) for k, v in symbolic.items()} == {
        "C2": (2, 16, 24, 256),
        "C3": (2, 8, 12, 512),
        "C4": (2, 4, 6, 1024),
        "C5": (2, 2, 3, 2048),
    }
    names = {layer.name for layer in backbone._flatten_layers()}
    assert "conv3_block8_3_conv" in names and "conv4_block36_3_conv" in names
    assert "conv3_block9_1_conv" not in names and "conv4_block37_1_conv" not in names


# --- serialization, precision --------------------------------------------------------------


def test_serialization_round_trip_with_weights_file(resnet50_files):
    backbone = ResNet(depth=50, freeze_at=3, weights=str(resnet50_files["keras3"]), name="bb")
    assert backbone.get_config()["weights"] == str(resnet50_files["keras3"])
    # Same outputs and the same frozen (non-trainable) weights in the clone.
    assert_round_trip(backbone, NORMALIZED[:, :32, :32])


def test_serialization_round_trip_of_a_variant():
    arguments = {
        "depth": 50,
        "freeze_at": 1,
        "norm": "gn",
        "norm_epsilon": 1e-3,
        "stride_in_1x1": False,
        "conv_bias": False,
        "groups": 8,
        "width_per_group": 16,
        "weights": None,
    }
    backbone = ResNet(**arguments, name="variant")
    config = backbone.get_config()
    assert {k: config[k] for k in arguments} == arguments
    assert config["name"] == "variant"
    assert_round_trip(backbone, NORMALIZED[:, :32, :32])


def test_from_config_does_not_need_the_weights_file(tmp_path):
    config = ResNet().get_config()
    config["weights"] = str(tmp_path / "deleted.weights.h5")
    backbone = ResNet.from_config(config)
    assert backbone.get_config() == config
    assert_round_trip(backbone)  # nor does a clone through JSON


def test_mixed_precision_runs_in_float16(resnet50_files):
    image = NORMALIZED[:, :32, :32]
    reference = ResNet(weights=str(resnet50_files["keras3"]))
    expected = reference(image)

    def make_layer():
        mixed = ResNet()
        mixed.build(image.shape)
        mixed.set_weights(reference.get_weights())
        return mixed

    # float32 weights; C2..C5 in the compute dtype; the policy survives from_config.
    runs = assert_mixed_precision(make_layer, image, float32_outputs=())
    for run in runs.values():
        assert run.reloaded.compute_dtype == run.compute_dtype
        for level in expected:
            ref = keras.ops.convert_to_numpy(expected[level])
            out = keras.ops.convert_to_numpy(run.outputs[level]).astype("float32")
            atol = run.tolerance(2e-2) * np.abs(ref).max()
            np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
