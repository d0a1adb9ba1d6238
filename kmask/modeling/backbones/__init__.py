"""Backbone networks producing the C2..C5 feature maps, and their registry.

``build_backbone("resnet", **fields)`` constructs a registered backbone; importing this
package registers ``ResNet`` as ``"resnet"`` (ResNet and ResNeXt variants).
"""

from kmask.modeling.backbones.backbone import (
    Backbone,
    FeatureSpec,
    build_backbone,
    register_backbone,
)
from kmask.modeling.backbones.resnet import ResNet

__all__ = ["Backbone", "FeatureSpec", "ResNet", "build_backbone", "register_backbone"]
