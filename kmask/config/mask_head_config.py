"""``MaskHeadConfig``: the mask branch (``model.mask_head``)."""

from __future__ import annotations

import dataclasses

from kmask.config.old_spellings import accepts_old_spellings
from kmask.config.pooler_config import PoolerConfig


@accepts_old_spellings("model.mask_head")
@dataclasses.dataclass(frozen=True)
class MaskHeadConfig:
    """Mask branch: RoIAlign 14x14 -> 4 conv3x3 -> deconv 2x2 s2 -> 1x1 conv, 28x28 masks.

    Under a ResNet-C4 trunk (``model.res5_head``) the head pools nothing itself and
    ``pooler.resolution`` must equal the trunk's output side.
    """

    # RoIAlign 14x14, the paper's four sampled locations per bin (2 per axis), aligned.
    pooler: PoolerConfig = PoolerConfig(14, sampling_ratio=2)
    # The 3x3 convs of the trunk (the paper's "4 consecutive convs") and their width; with
    # norm "gn" or "bn" each is followed by that normalization (torchvision's v2 head: bn).
    num_conv: int = 4
    conv_dim: int = 256
    norm: str = "none"
    # Predict a mask for the background slot too (torchvision's layout; never used).
    predict_background: bool = False
    # Weight of loss_mask (average binary cross-entropy of the RoI's class's map).
    loss_weight: float = 1.0
