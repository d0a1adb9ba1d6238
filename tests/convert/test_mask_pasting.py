"""kmask's torchvision-style mask pasting against torchvision's ``paste_masks_in_image``."""

from __future__ import annotations

import numpy as np
import pytest

from kmask.ops.masks import paste_masks

torch = pytest.importorskip("torch")
roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")


def test_torchvision_paste_matches_torchvision():
    rng = np.random.default_rng(0)
    height, width, count = 60, 90, 40
    # Every box overlaps the image (torchvision fails on boxes entirely outside it).
    corners = rng.uniform([-20, -20], [width - 5, height - 5], (count, 2))
    sizes = rng.uniform(25, 60, (count, 2))
    boxes_xyxy = np.concatenate([corners, corners + sizes], 1).astype(np.float32)
    masks = rng.uniform(0, 1, (count, 28, 28)).astype(np.float32)
    expected = (
        roi_heads.paste_masks_in_image(
            torch.from_numpy(masks[:, None]), torch.from_numpy(boxes_xyxy), (height, width)
        ).numpy()[:, 0]
        >= 0.5
    )
    got = paste_masks(
        masks[None], boxes_xyxy[None][..., [1, 0, 3, 2]], (height, width), method="torchvision"
    ).numpy()[0]
    # Equal but for probabilities within float rounding of the 0.5 threshold.
    assert (got != expected).sum() <= 3, (got != expected).sum()
    assert expected.any()
    exact = paste_masks(masks[None], boxes_xyxy[None][..., [1, 0, 3, 2]], (height, width))
    assert (exact.numpy()[0] != expected).sum() > 100  # the two methods do differ
