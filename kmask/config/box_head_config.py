"""``BoxHeadConfig``: the box branch (``model.box_head``)."""

from __future__ import annotations

import dataclasses

from kmask.config.old_spellings import accepts_old_spellings
from kmask.config.pooler_config import PoolerConfig
from kmask.errors import ConfigError


@accepts_old_spellings("model.box_head")
@dataclasses.dataclass(frozen=True)
class BoxHeadConfig:
    """Box branch: RoIAlign 7x7 -> [convs] -> 2 fc 1024 -> K+1 scores and per-class deltas.

    The box head owns its loss (softmax cross-entropy, smooth L1) and its inference
    (per-class NMS). torchvision's v2 head: ``num_conv: 4, norm: bn, num_fc: 1``.
    """

    # RoIAlign 7x7 with the paper's four sampled locations per bin (2 per axis), aligned.
    pooler: PoolerConfig = PoolerConfig(7, sampling_ratio=2)
    num_conv: int = 0
    conv_dim: int = 256
    norm: str = "none"
    num_fc: int = 2
    fc_dim: int = 1024
    # "flatten" the pooled RoI (FPN head) or "average" it over its cells (the ResNet-C4
    # head of Mask R-CNN figure 3, left: res5 -> average pool -> class and box outputs).
    pool: str = "flatten"
    # Predict deltas for the background slot too (torchvision's layout; never used).
    predict_background: bool = False
    # Delta weights (dy, dx, dh, dw) of the proposal -> box parameterization.
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    # Smooth-L1 transition point of the box loss (Fast R-CNN: 1.0; 0.0 = plain L1).
    smooth_l1_beta: float = 1.0
    cls_loss_weight: float = 1.0
    box_loss_weight: float = 1.0
    # Inference: score threshold, per-class NMS IoU, detections kept per image.
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    # Detections whose clipped height or width is below this (pixels) are dropped before
    # NMS (0 keeps all; torchvision: 1e-2; detectron2 drops empty boxes from its results:
    # 1e-6).
    min_box_size: float = 0.0

    def __post_init__(self) -> None:
        if self.pool not in ("flatten", "average"):
            raise ConfigError(
                f"model.box_head.pool: expected flatten or average, got {self.pool!r}"
            )
