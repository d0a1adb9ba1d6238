"""``FPNConfig``: the feature pyramid (``model.fpn``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FPNConfig:
    """Feature pyramid: P2..P5 from C2..C5, P6 by stride-2 subsampling of P5 (RPN only)."""

    num_channels: int = 256
    min_level: int = 2
    max_level: int = 6
    # Normalization after the lateral and output convs ("bn" in torchvision's v2 model).
    norm: str = "none"
