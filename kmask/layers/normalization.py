"""The normalization choices shared by backbones, the FPN and the heads (``build_norm``)."""

from __future__ import annotations

from typing import Any

import keras

from kmask.layers.frozen_batch_norm import FrozenBatchNorm

# "none": no normalization (the convolution keeps its bias);
# "bn": keras.layers.BatchNormalization (batch statistics in training; torchvision's v2 heads);
# "frozen_bn": FrozenBatchNorm (fixed pretrained statistics; the papers' backbone);
# "gn": keras.layers.GroupNormalization with 32 groups (detectron2's GN configs).
NORMS = ("none", "bn", "frozen_bn", "gn")
GN_GROUPS = 32
# PyTorch's default epsilon and momentum (Keras' momentum is 1 - PyTorch's).
_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


def check_norm(norm: str, where: str) -> None:
    """Raises ``ValueError`` naming ``where`` unless ``norm`` is one of ``NORMS``."""
    if norm not in NORMS:
        raise ValueError(f"{where}: norm must be one of {NORMS}, got {norm!r}")


def build_norm(
    norm: str, name: str, dtype: Any = None, epsilon: float = _EPSILON
) -> keras.layers.Layer | None:
    """A normalization layer over the channel (last) axis, or ``None`` for ``"none"``.

    Args:
      norm: one of ``NORMS``.
      name: the layer's name.
      dtype: its dtype policy.
      epsilon: added to the variance (torchvision's COCO weights use 0.0 for frozen BN).
    """
    check_norm(norm, name)
    if norm == "none":
        return None
    if norm == "frozen_bn":
        return FrozenBatchNorm(epsilon=epsilon, name=name, dtype=dtype)
    if norm == "bn":
        return keras.layers.BatchNormalization(
            momentum=_BN_MOMENTUM, epsilon=epsilon, name=name, dtype=dtype
        )
    return keras.layers.GroupNormalization(
        groups=GN_GROUPS, epsilon=epsilon, name=name, dtype=dtype
    )
