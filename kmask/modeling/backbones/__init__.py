"""Backbone networks producing the C2..C5 feature maps."""

from kmask.modeling.backbones.resnet import ResNet

__all__ = ["ResNet"]
