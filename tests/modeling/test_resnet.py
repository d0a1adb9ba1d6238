"""ResNet backbone: keras.applications equivalence and weight files, freezing, norms, config."""

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from kmask.layers import FrozenBatchNorm
from kmask.modeling.backbones import ResNet

STAGE_OUTPUTS = {
    50: ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    101: ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
}
APPLICATIONS = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}
IMAGE = np.random.default_rng(0).uniform(0.0, 255.0, (1, 64, 64, 3)).astype("float32")


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


def _stage_outputs(model: keras.Model, depth: int, image: np.ndarray) -> list[np.ndarray]:
    extractor = keras.Model(model.input, [model.get_layer(n).output for n in STAGE_OUTPUTS[depth]])
    preprocessed = keras.applications.resnet.preprocess_input(image.copy())
    return [keras.ops.convert_to_numpy(y) for y in extractor(preprocessed)]


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
            for weight_name, value in zip(names, values):
                group.create_dataset(weight_name, data=np.asarray(value, "float32"))


def _assert_features_equal(kmask_features: dict, expected: list[np.ndarray]) -> None:
    for level, reference in zip(("C2", "C3", "C4", "C5"), expected):
        actual = keras.ops.convert_to_numpy(kmask_features[level])
        assert actual.shape == reference.shape, level
        scale = np.abs(reference).max()
        assert scale > 0, level
        np.testing.assert_allclose(actual, reference, rtol=0, atol=1e-4 * scale, err_msg=level)


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
        "expected": _stage_outputs(model, 50, IMAGE),
        "keras3": keras3_file,
        "legacy_top": legacy_file,
    }


def test_resnet50_keras3_weights_file_matches_keras_applications(resnet50_files):
    backbone = ResNet(depth=50, weights=str(resnet50_files["keras3"]))
    _assert_features_equal(backbone(IMAGE), resnet50_files["expected"])


def test_resnet50_legacy_h5_with_top_matches_keras_applications(resnet50_files):
    backbone = ResNet(depth=50, weights=str(resnet50_files["legacy_top"]))
    _assert_features_equal(backbone(IMAGE), resnet50_files["expected"])


def test_resnet101_weights_file_matches_keras_applications(tmp_path):
    model = _random_applications_model(101)
    path = tmp_path / "resnet101_notop.weights.h5"
    model.save_weights(path)
    backbone = ResNet(depth=101, weights=str(path))
    _assert_features_equal(backbone(IMAGE), _stage_outputs(model, 101, IMAGE))


def test_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        ResNet(weights=str(path))


def test_weights_file_that_does_not_fit_is_named(resnet50_files, tmp_path):
    with pytest.raises(ValueError, match="resnet50_notop.weights.h5"):
        ResNet(depth=101, weights=str(resnet50_files["keras3"]))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="garbage.h5"):
        ResNet(depth=50, weights=str(garbage))


def test_weights_rejected_with_group_norm(resnet50_files):
    with pytest.raises(ValueError, match="frozen_bn"):
        ResNet(norm="group_norm", weights=str(resnet50_files["keras3"]))


@pytest.mark.parametrize("bad", [{"depth": 34}, {"norm": "batch_norm"}, {"freeze_at": 6}])
def test_invalid_arguments(bad):
    with pytest.raises(ValueError):
        ResNet(**bad)


def _stage_of(layer_name: str) -> int:
    return 1 if layer_name.startswith("conv1") else int(layer_name[4])


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_sets_trainability_by_stage(freeze_at):
    backbone = ResNet(freeze_at=freeze_at, norm="group_norm")
    backbone.build((None, None, None, 3))
    for variable in backbone.weights:
        stage = _stage_of(variable.path.split("/")[-2])
        assert variable.trainable == (stage > freeze_at), variable.path
    # FrozenBatchNorm weights never train, whatever freeze_at says.
    frozen_bn = ResNet(freeze_at=0)
    frozen_bn.build((None, None, None, 3))
    assert all("_conv/" in v.path for v in frozen_bn.trainable_weights)
    assert len(frozen_bn.trainable_weights) == 2 * 53  # kernel + bias of all 53 convs


def test_group_norm_variant_builds_and_runs():
    backbone = ResNet(norm="group_norm", freeze_at=0)
    features = backbone(IMAGE[:, :32, :32])
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "C2": (1, 8, 8, 256),
        "C3": (1, 4, 4, 512),
        "C4": (1, 2, 2, 1024),
        "C5": (1, 1, 1, 2048),
    }
    assert all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in features.values())
    layers = backbone._flatten_layers()
    norms = [layer for layer in layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert len(norms) == 53 and all(n.groups == 32 for n in norms)
    assert not any(isinstance(layer, FrozenBatchNorm) for layer in layers)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (100, 70)])
def test_output_shapes_and_strides(height, width):
    backbone = ResNet()
    features = backbone(np.zeros((2, height, width, 3), "float32"))
    expected = backbone.compute_output_shape((2, height, width, 3))
    for level, stride, channels in [
        ("C2", 4, 256),
        ("C3", 8, 512),
        ("C4", 16, 1024),
        ("C5", 32, 2048),
    ]:
        shape = (2, -(-height // stride), -(-width // stride), channels)
        assert tuple(features[level].shape) == shape == expected[level]
    symbolic = backbone(keras.Input((None, None, 3)))
    assert {k: tuple(v.shape) for k, v in symbolic.items()} == {
        k: (None, None, None, c) for k, c in zip(("C2", "C3", "C4", "C5"), (256, 512, 1024, 2048))
    }


def test_serialization_round_trip(resnet50_files):
    backbone = ResNet(depth=50, freeze_at=3, weights=str(resnet50_files["keras3"]), name="bb")
    config = backbone.get_config()
    assert {k: config[k] for k in ("depth", "freeze_at", "norm", "weights")} == {
        "depth": 50,
        "freeze_at": 3,
        "norm": "frozen_bn",
        "weights": str(resnet50_files["keras3"]),
    }
    clone = ResNet.from_config(config)
    assert clone.get_config() == config
    clone.build((None, None, None, 3))
    clone.set_weights(backbone.get_weights())
    expected, actual = backbone(IMAGE[:, :32, :32]), clone(IMAGE[:, :32, :32])
    for level in expected:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(actual[level]), keras.ops.convert_to_numpy(expected[level])
        )
    assert [v.trainable for v in clone.weights] == [v.trainable for v in backbone.weights]
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert isinstance(restored, ResNet) and restored.get_config() == config


def test_from_config_does_not_need_the_weights_file(tmp_path):
    config = ResNet().get_config()
    config["weights"] = str(tmp_path / "deleted.weights.h5")
    assert ResNet.from_config(config).get_config() == config


def test_mixed_precision_runs_in_float16(resnet50_files):
    image = IMAGE[:, :32, :32]
    reference = ResNet(weights=str(resnet50_files["keras3"]))
    mixed = ResNet(weights=str(resnet50_files["keras3"]), dtype="mixed_float16")
    assert all(v.dtype == "float32" for v in mixed.weights)
    expected, actual = reference(image), mixed(image)
    for level in expected:
        assert actual[level].dtype == "float16"
        ref = keras.ops.convert_to_numpy(expected[level])
        out = keras.ops.convert_to_numpy(actual[level]).astype("float32")
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-2 * np.abs(ref).max())
