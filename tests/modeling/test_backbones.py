"""The backbone contract (Backbone, FeatureSpec, compute_output_shape) and the registry."""

import math

import keras
import numpy as np
import pytest

from kmask.modeling.backbones import (
    Backbone,
    FeatureSpec,
    ResNet,
    build_backbone,
    register_backbone,
)
from kmask.modeling.backbones import backbone as backbone_module


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by a test are undone after it."""
    monkeypatch.setattr(backbone_module, "_REGISTRY", dict(backbone_module._REGISTRY))


class _PoolingBackbone(Backbone):
    """A toy backbone: C3/C4 by "same"-padded average pooling plus a 1x1 conv."""

    def __init__(self, channels: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.proj = keras.layers.Conv2D(channels, 1, name="proj")

    def output_specs(self):
        return {"C3": FeatureSpec(self.channels, 8), "C4": FeatureSpec(self.channels, 16)}

    def call(self, images):
        x = self.proj(images)
        c3 = keras.ops.average_pool(x, 8, strides=8, padding="same")
        return {"C3": c3, "C4": keras.ops.average_pool(c3, 2, strides=2, padding="same")}


def test_build_backbone_resnet():
    backbone = build_backbone("resnet", depth=101, freeze_at=0, norm="gn", name="backbone")
    assert isinstance(backbone, ResNet) and isinstance(backbone, Backbone)
    assert (backbone.depth, backbone.freeze_at, backbone.norm) == (101, 0, "gn")
    assert backbone.name == "backbone"
    defaults = build_backbone("resnet")
    assert defaults.get_config() | {"name": None} == ResNet().get_config() | {"name": None}


def test_unknown_type_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match="'resnext_wide'") as error:
        build_backbone("resnext_wide", depth=50)
    assert "resnet" in str(error.value)


def test_register_backbone_and_the_base_output_shape(registry):
    assert register_backbone("pooling")(_PoolingBackbone) is _PoolingBackbone
    backbone = build_backbone("pooling", channels=4)
    assert isinstance(backbone, _PoolingBackbone)
    images = np.random.default_rng(0).normal(size=(2, 37, 50, 3)).astype("float32")
    features = backbone(images)
    assert backbone.compute_output_shape(images.shape) == {
        name: tuple(value.shape) for name, value in features.items()
    }
    assert backbone.compute_output_shape((None, None, 50, 3)) == {
        "C3": (None, None, 7, 4),
        "C4": (None, None, 4, 4),
    }
    symbolic = backbone(keras.Input((None, None, 3)))
    assert {name: tuple(v.shape) for name, v in symbolic.items()} == {
        "C3": (None, None, None, 4),
        "C4": (None, None, None, 4),
    }
    with pytest.raises(ValueError, match="unknown backbone type 'pooling'"):
        backbone_module._REGISTRY.pop("pooling")
        build_backbone("pooling")


def test_registration_conflicts(registry):
    with pytest.raises(TypeError, match="not a Backbone"):
        register_backbone("dense")(keras.layers.Dense)
    register_backbone("resnet")(ResNet)  # the same class again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet")(_PoolingBackbone)
    assert build_backbone("resnet").__class__ is ResNet


def test_output_specs_must_be_implemented():
    with pytest.raises(NotImplementedError, match="output_specs"):
        Backbone().output_specs()


def test_feature_spec_is_a_named_tuple():
    spec = FeatureSpec(channels=256, stride=4)
    assert spec == (256, 4) and spec.channels == 256 and spec.stride == 4


@pytest.mark.parametrize(
    "arguments",
    [{}, {"depth": 101, "groups": 32, "width_per_group": 8, "stride_in_1x1": False}],
)
def test_resnet_output_specs_describe_its_outputs(arguments):
    backbone = ResNet(**arguments)
    specs = backbone.output_specs()  # known before the layer is built
    assert specs == {
        "C2": (256, 4),
        "C3": (512, 8),
        "C4": (1024, 16),
        "C5": (2048, 32),
    }
    assert all(spec.stride == 2 ** int(name[1:]) for name, spec in specs.items())
    images = np.zeros((1, 33, 65, 3), "float32")
    features = backbone(images)
    assert features.keys() == specs.keys()
    for name, spec in specs.items():
        expected = (1, math.ceil(33 / spec.stride), math.ceil(65 / spec.stride), spec.channels)
        assert tuple(features[name].shape) == expected, name
