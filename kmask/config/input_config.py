"""``InputConfig``: the model's input normalization (``model.input``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Input normalization, applied once before the backbone (``ImageNormalization``).

    Images enter the model as RGB 0..255. They are reordered to ``channel_order``,
    multiplied by ``pixel_scale``, and ``(x - pixel_mean) / pixel_std`` is taken per
    channel (mean and std in ``channel_order``). Padding is zero after normalization.
    Defaults: keras.applications / Caffe ResNet (BGR minus the ImageNet means, std 1).
    detectron2's MSRA backbones: BGR, mean (103.530, 116.280, 123.675). torchvision:
    RGB, scale 1/255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    """

    channel_order: str = "BGR"
    pixel_scale: float = 1.0
    pixel_mean: tuple[float, ...] = (103.939, 116.779, 123.68)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
