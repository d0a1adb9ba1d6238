"""``ResNetConfig``: the ``resnet`` backbone's own fields (``model.backbone.resnet``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """ResNet-50/101/152 and ResNeXt (``groups`` x ``width_per_group``; ResNeXt-101 32x8d =
    depth 101, groups 32, width_per_group 8), C2..C5 at strides 4..32 (``ResNet``). The
    ResNet-C4 models' ``res5_head`` takes its conv5 layout (all fields but ``depth``)."""

    depth: int = 50
    # "frozen_bn" (fixed affine from pretraining, papers' default), "bn", "gn" or "none".
    norm: str = "frozen_bn"
    # Normalization epsilon (keras.applications: 1.001e-5; torchvision's COCO weights: 0.0).
    norm_epsilon: float = 1e-5
    # Stride 2 on the first 1x1 conv of a stage (MSRA / Caffe, keras.applications,
    # detectron2's R-50/R-101) or, False, on the 3x3 conv (torchvision's "v1.5", ResNeXt).
    stride_in_1x1: bool = True
    # Convolutions with a bias (keras.applications) or without (detectron2, torchvision).
    conv_bias: bool = True
    groups: int = 1
    width_per_group: int = 64
