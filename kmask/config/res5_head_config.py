"""``Res5HeadConfig``: the ResNet-C4 RoI trunk (``model.res5_head``)."""

from __future__ import annotations

import dataclasses

from kmask.config.old_spellings import accepts_old_spellings
from kmask.config.pooler_config import PoolerConfig
from kmask.errors import ConfigError


@accepts_old_spellings("model.res5_head")
@dataclasses.dataclass(frozen=True)
class Res5HeadConfig:
    """The ResNet-C4 RoI trunk (Mask R-CNN figure 3, left; ``Res5Head``): RoIAlign on C4,
    then the backbone's conv5 stage per RoI, 7x7x2048 maps shared by the box head (average
    pool) and the mask head (deconv to 14x14). The paper: RoIAlign 7x7, conv5's first block
    with stride 1. detectron2's ``Res5ROIHeads``: ``pooler: {resolution: 14,
    sampling_ratio: 0}``, ``stride: 2``. The conv5 layout (norm, strides, groups) is the
    backbone's (``model.backbone.resnet``); ``model.backbone.freeze_at: 5`` freezes it.
    """

    pooler: PoolerConfig = PoolerConfig(7, sampling_ratio=2)
    stride: int = 1

    def __post_init__(self) -> None:
        if self.stride not in (1, 2):
            raise ConfigError(f"model.res5_head.stride: expected 1 or 2, got {self.stride}")

    @property
    def output_side(self) -> int:
        """Side of the conv5 maps the heads receive: ``ceil(pooler.resolution / stride)``."""
        return -(-self.pooler.resolution // self.stride)
