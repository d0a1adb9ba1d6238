"""``ROIHeadsConfig``: the RoI stage's sampling (``model.roi_heads``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ROIHeadsConfig:
    """RoI stage: sampling of the RoIs the heads train on (the heads have their own sections)."""

    # RoIs sampled per image for the heads, 25% positive (Mask R-CNN with FPN: 512).
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    # RoIs with IoU >= 0.5 with a ground truth are foreground, the rest background.
    fg_iou_threshold: float = 0.5
    # Ground-truth boxes join the proposals during training.
    add_gt_to_proposals: bool = True
