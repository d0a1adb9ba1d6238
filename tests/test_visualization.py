"""Prediction pictures: a picture with no detection above the threshold says so."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kmask.visualization import MIN_DISPLAY_SIDE, draw_detections


def tag_extent(text: str) -> tuple[int, int]:
    """(width, height) in pixels of the filled tag ``_write_tag`` draws for ``text``."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=ImageFont.load_default())
    return right - left + 5, bottom - top + 5


def changed(picture: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Bool [H, W]: pixels of ``picture`` that differ from ``image`` (same size)."""
    return np.any(picture != image, axis=-1)


def test_no_detection_above_the_threshold_is_written_on_the_picture():
    side = MIN_DISPLAY_SIDE  # no upscaling
    image = np.full((side, side, 3), 40, np.uint8)
    box = np.array([[100.0, 100.0, 200.0, 220.0]])
    low = draw_detections(image, box, np.array([0]), np.array([0.4]), None, ["cat"], 0.5)
    width, height = tag_extent("no detections >= 0.5")
    ys, xs = np.nonzero(changed(low, image))
    assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (0, 0, height, width)

    nothing = draw_detections(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0), None, ["cat"])
    np.testing.assert_array_equal(nothing, low)

    high = draw_detections(image, box, np.array([0]), np.array([0.6]), None, ["cat"], 0.5)
    assert not changed(high, image)[:height, :width].any()  # the box and its tag only
    assert changed(high, image)[100, 100:220].all()  # the box's top edge
