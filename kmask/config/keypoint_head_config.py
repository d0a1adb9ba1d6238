"""``KeypointHeadConfig``: the keypoint branch (``model.keypoint_head``)."""

from __future__ import annotations

import dataclasses

from kmask.config.old_spellings import accepts_old_spellings
from kmask.config.pooler_config import PoolerConfig
from kmask.errors import ConfigError

# ``heatmap_coordinates`` -> how far the heatmaps' coordinates lie below continuous ones.
HEATMAP_COORDINATES = {"continuous": 0.0, "pixel_index": 0.5}


@accepts_old_spellings("model.keypoint_head")
@dataclasses.dataclass(frozen=True)
class KeypointHeadConfig:
    """Keypoint branch (Mask R-CNN section 5): RoIAlign 14x14 -> 8 conv3x3 512 -> deconv 4x4
    s2 -> 2x bilinear, 56x56 heatmap logits per keypoint, softmax cross-entropy."""

    # Keypoints per instance: the length of the dataset's categories' ``keypoints`` list.
    num_keypoints: int = 17
    # detectron2: adaptive (0), aligned; torchvision: 2 samples, not aligned.
    pooler: PoolerConfig = PoolerConfig(14, sampling_ratio=0)
    # The paper's "stack of eight 3x3 512-d conv layers".
    num_conv: int = 8
    conv_dim: int = 512
    norm: str = "none"
    # Loss / number of labelled keypoints in the batch (torchvision; detectron2's default);
    # false: / (images * foreground RoI slots * num_keypoints) (detectron2's alternative).
    normalize_by_visible_keypoints: bool = True
    # Weight of loss_keypoint (softmax cross-entropy over the heatmap's cells).
    loss_weight: float = 1.0
    # The coordinates the heatmaps are trained in and decoded to: "continuous" (kmask,
    # detectron2: keypoints as kmask.data loads them, COCO's integer pixel index + 0.5) or
    # "pixel_index" (torchvision: COCO's pixel indices taken as coordinates, 0.5 px lower).
    # Detected keypoints are continuous either way (COCO results subtract 0.5), so a
    # converted model's COCO results are its source's.
    heatmap_coordinates: str = "continuous"

    def __post_init__(self) -> None:
        if self.num_keypoints < 1:
            raise ConfigError("model.keypoint_head.num_keypoints: expected a positive integer")
        if self.heatmap_coordinates not in HEATMAP_COORDINATES:
            raise ConfigError(
                "model.keypoint_head.heatmap_coordinates: expected one of "
                f"{', '.join(HEATMAP_COORDINATES)}, got {self.heatmap_coordinates!r}"
            )
