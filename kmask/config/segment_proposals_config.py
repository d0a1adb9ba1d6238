"""``SegmentProposalsConfig``: FPN segment proposals (``model.segment_proposals``)."""

from __future__ import annotations

import dataclasses

from kmask.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SegmentProposalsConfig:
    """FPN segment proposals (FPN paper section 6 and appendix A; ``SegmentProposals``):
    DeepMask-style MLPs on P2..P6 predicting a mask and an objectness score per window.
    Replaces the RPN; needs ``box_head: null`` and ``mask_head: null``. The paper's FPN
    has ``d = 128`` (``model.fpn.num_channels: 128``)."""

    # Object scale (larger box side) of the first MLP on each level P2..P6.
    canonical_scales: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    # Input window of each MLP per level: 5x5, and 7x7 (~5 sqrt 2) for the half octaves
    # (scale x sqrt 2); one entry = one MLP per octave (Table 6's single-MLP rows).
    window_sizes: tuple[int, ...] = (5, 7)
    # Window side = (1 + padding) x canonical scale: 25% -> 40 .. 640 pixels (5x5 MLP).
    padding: float = 0.25
    # Hidden units of each MLP (its w x w conv) and side of the predicted masks.
    hidden_dim: int = 512
    mask_size: int = 14
    # Positives: the object's centre within this many cells of the window's (+-1 cell).
    center_radius: float = 1.0
    # Windows sampled per image for the losses (128 per image), 1:3 positive:negative.
    batch_size_per_image: int = 128
    positive_fraction: float = 0.25
    # "The mask loss is given 10x higher weight than the score loss."
    score_loss_weight: float = 1.0
    mask_loss_weight: float = 10.0
    # Masks at the highest scoring windows: 1000 per image.
    num_proposals: int = 1000
    # The paper does no NMS (null). A value: greedy NMS at this IoU over the tight boxes of
    # the masks of the pre_nms_topk best windows.
    nms_threshold: float | None = None
    pre_nms_topk: int = 2000

    def __post_init__(self) -> None:
        where = "model.segment_proposals"
        if not self.canonical_scales or min(self.canonical_scales) <= 0:
            raise ConfigError(f"{where}.canonical_scales: expected positive scales")
        if list(self.canonical_scales) != sorted(set(self.canonical_scales)):
            raise ConfigError(f"{where}.canonical_scales: expected increasing scales")
        if not self.window_sizes or min(self.window_sizes) < 1:
            raise ConfigError(f"{where}.window_sizes: expected positive window sizes")
        for name in ("hidden_dim", "mask_size", "batch_size_per_image", "num_proposals"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: expected a positive integer")
        if self.pre_nms_topk < self.num_proposals:
            raise ConfigError(f"{where}.pre_nms_topk: expected at least num_proposals")
        for name in ("padding", "score_loss_weight", "mask_loss_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0")
        if self.center_radius <= 0:
            raise ConfigError(f"{where}.center_radius: expected a positive number of cells")
        if not 0.0 < self.positive_fraction <= 1.0:
            raise ConfigError(f"{where}.positive_fraction: expected a value in (0, 1]")
        if self.nms_threshold is not None and not 0.0 < self.nms_threshold <= 1.0:
            raise ConfigError(f"{where}.nms_threshold: expected a value in (0, 1] or null")
