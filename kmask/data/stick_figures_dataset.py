"""A synthetic person-keypoint dataset of stick figures (``kmask make-shapes --keypoints``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kmask.data.shapes_dataset import (
    ShapesDataset,
    _acceptable,
    _background,
    _distinct_colours,
    _Piece,
    _place,
)

# Keypoints, skeleton (1-based, COCO style) and OKS sigmas (COCO's values for shoulders,
# wrists, hips, knees and ankles; the head, the centre of a disk, takes the shoulders').
KEYPOINT_NAMES = (
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
SKELETON = (
    (1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (2, 6), (3, 7), (6, 7), (6, 8), (7, 9), (8, 10),
    (9, 11),
)  # fmt: skip
KEYPOINT_SIGMAS = (0.079, 0.079, 0.079, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089)

# Body-frame geometry in figure heights: ``a`` towards the image's right for a figure
# facing the viewer (its left side), ``b`` upwards; the origin is between the hips.
_NECK_B = 0.36
_HEAD_B, _HEAD_RADIUS = 0.47, 0.09
_SHOULDER_A, _SHOULDER_B, _ARM = 0.12, 0.34, 0.30
_HIP_A, _THIGH, _SHIN = 0.08, 0.23, 0.23
_SKIN, _HAIR, _EYES = (235.0, 200.0, 170.0), (70.0, 45.0, 25.0), (20.0, 20.0, 20.0)


class StickFiguresDataset(ShapesDataset):
    """Stick figures (category ``person``) with 11 keypoints on a textured background.

    Each figure has a head, a torso, shoulders and hips, two straight arms and two legs
    bent at the knee, in its own colour, tilted and posed at random, 35..75% of the image
    side tall. Three out of four face the viewer (a skin-coloured head with two eyes:
    their left side is on the image's right); the others are seen from behind (a dark
    head: their left side is on the image's left). A horizontal flip mirrors a figure
    into another valid figure whose ``left_*``/``right_*`` keypoints swap, as for COCO
    persons (the flip map follows from the names, ``CategoryMap.flip_permutation``).

    Keypoints in COCO format ``[x, y, v]`` (pixel indices: the pixel centre is ``p +
    0.5`` in continuous coordinates): ``v = 2`` visible; ``v = 1`` covered by a later
    figure or by a grey occluding bar (drawn over some images); ``v = 0`` and ``(0, 0)``
    outside the image. Masks are the visible pixels of each figure (pixel centres inside a
    limb, torso or head); a figure is redrawn when it would leave an earlier one with less
    than half of its visible area. The category carries ``keypoints``, ``skeleton`` and
    ``keypoint_sigmas`` (the OKS sigmas ``kmask evaluate`` uses). Deterministic per
    ``(seed, split, index)`` as ``ShapesDataset``.

    Args:
      image_size: side of the square images, or ``(height, width)``.
      seed: random seed.
      max_shapes: most figures per image.
    """

    CATEGORIES = (
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [list(edge) for edge in SKELETON],
            "keypoint_sigmas": list(KEYPOINT_SIGMAS),
        },
    )

    def __init__(
        self, image_size: int | tuple[int, int] = 128, seed: int = 0, max_shapes: int = 3
    ) -> None:
        super().__init__(image_size, seed, max_shapes)

    def render(self, split: str, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """One image and its figures.

        Returns:
          ``(image, instances)``: uint8 ``[H, W, 3]`` RGB; each instance a dict with
          ``category_id``, ``mask`` (bool ``[H, W]``, visible part), ``top`` and ``left``
          (0) and ``keypoints`` (float64 ``[K, 3]`` COCO ``(x, y, v)``), in drawing order.
        """
        rng = np.random.default_rng([self.seed, {"train": 0, "val": 1}[split], index, 1])
        image = _background(rng, self.height, self.width)
        ys, xs = np.mgrid[0 : self.height, 0 : self.width] + 0.5
        figures: list[dict[str, Any]] = []
        bodies: list[_Piece] = []
        for _ in range(int(rng.integers(1, self.max_shapes + 1))):
            for _attempt in range(20):
                figure = self._random_figure(rng, ys, xs)
                body = _Piece(1, 0, 0, figure["body"])
                if _acceptable(bodies, body):
                    _place(bodies, body)
                    figures.append(figure)
                    break
        colours = _distinct_colours(rng, len(figures), image.reshape(-1, 3).mean(axis=0))
        for figure, colour in zip(figures, colours):
            image[figure["body"]] = colour + rng.normal(0.0, 6.0, size=3)
            image[figure["head"]] = _SKIN if figure["front"] else _HAIR
            image[figure["eyes"]] = _EYES
        occluder = np.zeros((self.height, self.width), bool)
        if rng.uniform() < 0.3:
            top, left = rng.uniform(0.0, 0.8) * self.height, rng.uniform(0.0, 0.8) * self.width
            bar_h = rng.uniform(0.06, 0.15) * self.height
            bar_w = rng.uniform(0.2, 0.5) * self.width
            occluder = (ys >= top) & (ys < top + bar_h) & (xs >= left) & (xs < left + bar_w)
            image[occluder] = rng.uniform(90, 160) + rng.normal(0.0, 4.0, size=(occluder.sum(), 3))
        instances = []
        for i, figure in enumerate(figures):
            covered = occluder.copy()
            for later in figures[i + 1 :]:
                covered |= later["body"]
            visible = figure["body"] & ~covered
            if visible.sum() < 20:  # hidden behind the occluder: not annotated
                continue
            instances.append(
                {
                    "category_id": 1,
                    "mask": visible,
                    "top": 0,
                    "left": 0,
                    "keypoints": self._coco_keypoints(figure["points"], covered),
                }
            )
        return np.clip(image, 0, 255).astype(np.uint8), instances

    def _random_figure(
        self, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray
    ) -> dict[str, Any]:
        """Keypoints (continuous ``(x, y)`` [K, 2]) and masks of one random figure."""
        side = min(self.height, self.width)
        height = rng.uniform(0.35, 0.75) * side
        centre = np.array([rng.uniform(0.1, 0.9) * self.width, rng.uniform(0.1, 0.9) * self.height])
        tilt = rng.uniform(-0.4, 0.4)
        front = bool(rng.uniform() < 0.75)
        facing = 1.0 if front else -1.0  # image side of the figure's left
        right = np.array([np.cos(tilt), np.sin(tilt)])
        up = np.array([np.sin(tilt), -np.cos(tilt)])

        def place(a: float, b: float) -> np.ndarray:
            return centre + height * (a * right + (b - 0.03) * up)

        def limb(start: tuple[float, float], side_sign: float, angle: float, length: float):
            a, b = start
            return a + side_sign * length * np.sin(angle), b - length * np.cos(angle)

        body = {}
        for name, sign in (("left", facing), ("right", -facing)):
            shoulder = (sign * _SHOULDER_A, _SHOULDER_B)
            hip = (sign * _HIP_A, 0.0)
            knee = limb(hip, sign, rng.uniform(-0.1, 0.5), _THIGH)
            body[f"{name}_shoulder"] = shoulder
            body[f"{name}_wrist"] = limb(shoulder, sign, rng.uniform(0.1, 2.6), _ARM)
            body[f"{name}_hip"] = hip
            body[f"{name}_knee"] = knee
            body[f"{name}_ankle"] = limb(knee, sign, rng.uniform(-0.3, 0.3), _SHIN)
        body["head"] = (0.0, _HEAD_B)
        points = np.stack([place(*body[name]) for name in KEYPOINT_NAMES])
        named = dict(zip(KEYPOINT_NAMES, points))
        width = max(1.5, 0.05 * height)
        segments = [
            (place(0.0, 0.0), place(0.0, _NECK_B), 1.4 * width),
            (named["left_shoulder"], named["right_shoulder"], width),
            (named["left_hip"], named["right_hip"], width),
        ]
        for side_name in ("left", "right"):
            joints = [named[f"{side_name}_{joint}"] for joint in ("hip", "knee", "ankle")]
            segments.append((named[f"{side_name}_shoulder"], named[f"{side_name}_wrist"], width))
            segments += [(joints[0], joints[1], width), (joints[1], joints[2], width)]
        limbs = np.zeros(ys.shape, bool)
        for start, end, thickness in segments:
            limbs |= _near_segment(start, end, thickness / 2.0, ys, xs)
        head_centre = named["head"]
        radius = _HEAD_RADIUS * height
        head = (xs - head_centre[0]) ** 2 + (ys - head_centre[1]) ** 2 <= radius**2
        eyes = np.zeros(ys.shape, bool)
        if front:
            for offset in (-0.35, 0.35):
                eye = head_centre + radius * (offset * right + 0.15 * up)
                eyes |= (xs - eye[0]) ** 2 + (ys - eye[1]) ** 2 <= (max(0.8, 0.2 * radius)) ** 2
        return {
            "points": points,
            "body": limbs | head,
            "head": head & ~eyes,
            "eyes": eyes & head,
            "front": front,
        }

    def _coco_keypoints(self, points: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """COCO ``(x, y, v)`` [K, 3]: pixel indices (``p - 0.5``), visibility 2 / 1 / 0."""
        keypoints = np.zeros((len(points), 3))
        for k, (x, y) in enumerate(points):
            if not (0.0 <= x < self.width and 0.0 <= y < self.height):
                continue
            hidden = covered[int(y), int(x)]
            keypoints[k] = (round(x - 0.5, 2), round(y - 0.5, 2), 1 if hidden else 2)
        return keypoints


def _near_segment(
    start: np.ndarray, end: np.ndarray, radius: float, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Pixels whose centre lies within ``radius`` of the segment ``start``-``end`` (x, y)."""
    direction = end - start
    length2 = max(float(direction @ direction), 1e-9)
    t = np.clip(((xs - start[0]) * direction[0] + (ys - start[1]) * direction[1]) / length2, 0, 1)
    dx = xs - (start[0] + t * direction[0])
    dy = ys - (start[1] + t * direction[1])
    return dx * dx + dy * dy <= radius * radius
