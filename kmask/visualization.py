"""Drawing detections (masks, boxes, class names, scores, keypoints with their skeleton) or
region proposals over images."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kmask.modeling.roi_heads.instance_head import OutputKind, head_outputs

# Images whose longer side is below this are enlarged (nearest neighbour, integer factor)
# before drawing, so that labels stay legible on small images.
MIN_DISPLAY_SIDE = 512
# Keypoints scoring below this are not drawn (detectron2's visualizer: 0.05 on the same
# softmax probability, ``kmask.ops.keypoints.heatmaps_to_keypoints``).
KEYPOINT_THRESHOLD = 0.05
# The instance heads' output kinds drawn (``InstanceHead.outputs``): pasted box-frame maps
# as masks, points as keypoints; other kinds (areas) are not drawn.
_DRAWN_KINDS = (OutputKind.BOX_FRAME, OutputKind.POINTS)


def instance_color(index: int) -> tuple[int, int, int]:
    """A saturated colour, well apart from its neighbours (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(255 * red), int(255 * green), int(255 * blue)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    mask_alpha: float = 0.45,
    labelled: bool = True,
    keypoints: np.ndarray | None = None,
    skeleton: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """Draws the detections scoring ``>= score_threshold`` over ``image``.

    Each instance gets its own colour: the mask is blended in at ``mask_alpha`` with a
    one-pixel outline, the box is outlined, and ``"name 0.97"`` is written on a filled tag
    at the box's top-left corner. Keypoints scoring ``>= KEYPOINT_THRESHOLD`` are dots
    with a white rim, joined along the ``skeleton`` edges in the instance's colour. Lower
    scores are drawn first so the best stay on top.

    Args:
      image: uint8 ``[H, W, 3]`` RGB.
      boxes: ``[n, 4]`` ``(y1, x1, y2, x2)`` in pixels of ``image``.
      classes: ``[n]`` 0-based class ids (indices into ``class_names``).
      scores: ``[n]``.
      masks: ``[n, H, W]`` bool, or None for boxes only.
      class_names: name of each class.
      score_threshold: detections below it are not drawn.
      mask_alpha: opacity of the mask colour.
      labelled: write the ``"name score"`` tags (False: boxes and masks only).
      keypoints: ``[n, K, 3]`` ``(x, y, score)`` in continuous pixels of ``image``, or None.
      skeleton: keypoint index pairs (0-based) joined by lines.

    Returns:
      uint8 ``[H * f, W * f, 3]`` with ``f = ceil(MIN_DISPLAY_SIDE / max(H, W))`` (1 for
      images at least that large).
    """
    height, width = image.shape[:2]
    factor = max(1, math.ceil(MIN_DISPLAY_SIDE / max(height, width)))
    canvas = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1).astype(np.float32)
    keep = [i for i in np.argsort(scores, kind="stable") if scores[i] >= score_threshold]
    best_first = sorted(keep, key=lambda i: -scores[i])
    colors = {i: instance_color(rank) for rank, i in enumerate(best_first)}
    if masks is not None:
        for i in keep:
            mask = np.repeat(np.repeat(masks[i], factor, axis=0), factor, axis=1)
            color = np.array(colors[i], np.float32)
            canvas[mask] = (1.0 - mask_alpha) * canvas[mask] + mask_alpha * color
            inner = mask.copy()
            inner[1:, :] &= mask[:-1, :]
            inner[:-1, :] &= mask[1:, :]
            inner[:, 1:] &= mask[:, :-1]
            inner[:, :-1] &= mask[:, 1:]
            canvas[mask & ~inner] = color
    picture = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    line = max(1, factor // 2)
    for i in keep:
        y1, x1, y2, x2 = (float(v) * factor for v in boxes[i])
        color = colors[i]
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=line)
        if keypoints is not None:
            _draw_keypoints(draw, np.asarray(keypoints[i], np.float64), skeleton, factor, color)
        if not labelled:
            continue
        label = f"{class_names[int(classes[i])]} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tag_h = bottom - top + 4
        _write_tag(draw, font, x1, y1 - tag_h if y1 - tag_h >= 0 else y1, label, color)
    if not keep and labelled:  # say so, rather than show a bare picture
        threshold = f" >= {score_threshold:g}" if np.isfinite(score_threshold) else ""
        _write_tag(draw, font, 0.0, 0.0, f"no detections{threshold}", (255, 255, 255))
    return np.asarray(picture)


def _write_tag(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont,
    x: float,
    y: float,
    text: str,
    color: tuple[int, int, int],
) -> None:
    """``text`` in black on a filled ``color`` tag whose top-left corner is ``(x, y)``."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.rectangle([x, y, x + right - left + 4, y + bottom - top + 4], fill=color)
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0), font=font)


def _draw_keypoints(
    draw: ImageDraw.ImageDraw,
    keypoints: np.ndarray,
    skeleton: Sequence[tuple[int, int]],
    factor: int,
    color: tuple[int, int, int],
) -> None:
    """One instance's skeleton and keypoint dots (``keypoints [K, 3]`` ``(x, y, score)``)."""
    shown = keypoints[:, 2] >= KEYPOINT_THRESHOLD
    points = keypoints[:, :2] * factor
    width = max(1, factor // 2)
    for a, b in skeleton:
        if shown[a] and shown[b]:
            draw.line([tuple(points[a]), tuple(points[b])], fill=color, width=width)
    radius = max(1.5, 0.75 * factor)
    for (x, y), visible in zip(points, shown):
        if visible:
            box = [x - radius, y - radius, x + radius, y + radius]
            draw.ellipse(box, fill=color, outline=(255, 255, 255))


def draw_image_detections(
    image: np.ndarray,
    detections: Mapping[str, Any],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    max_proposals: int = 20,
    skeleton: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """Draws one image's ``Predictor.image_detections`` as the model's mode allows.

    - detections with ``masks`` (Mask R-CNN): masks, boxes, names and scores of those
      scoring ``>= score_threshold``;
    - detections without masks (Faster R-CNN): the same without masks;
    - with ``keypoints`` (Keypoint R-CNN) also the keypoints joined by the ``skeleton``;
      in general the instance heads' outputs drawn by kind (``OutputKind``): the first
      ``BOX_FRAME`` output (pasted, ``masks``) as masks, the first ``POINTS`` output
      (``keypoints``) as keypoints;
    - proposals only (RPN-only model): the ``max_proposals`` best proposals, whatever
      their score, labelled ``"proposal 0.97"`` (the objectness; no label without
      ``proposal_scores``), with their ``proposal_masks`` when present (segment proposals).

    Args:
      image: uint8 ``[H, W, 3]`` RGB; the detections must be in its pixels.
      detections: ``boxes [n, 4]`` ``(y1, x1, y2, x2)``, ``scores [n]``, ``classes [n]``
        0-based and optionally ``masks [n, H, W]`` bool and ``keypoints [n, K, 3]`` ``(x,
        y, score)``; or ``proposals [p, 4]`` best first and optionally ``proposal_scores
        [p]`` and ``proposal_masks [p, H, W]`` bool.
      class_names: name of each class.
      score_threshold: detections below it are not drawn (not applied to proposals).
      max_proposals: proposals drawn for an RPN-only model.
      skeleton: keypoint index pairs (0-based, ``CategoryMap.keypoint_skeleton``).

    Returns:
      uint8 RGB, enlarged as ``draw_detections`` does.
    """
    if "boxes" in detections:
        # The instance heads' drawable outputs, the first of each kind (masks, keypoints).
        drawn: dict[OutputKind, Any] = {}
        for output in head_outputs().values():
            if output.detection_key in detections and output.kind in _DRAWN_KINDS:
                drawn.setdefault(output.kind, detections[output.detection_key])
        return draw_detections(
            image,
            np.asarray(detections["boxes"]).reshape(-1, 4),
            np.asarray(detections["classes"]),
            np.asarray(detections["scores"]),
            drawn.get(OutputKind.BOX_FRAME),
            class_names,
            score_threshold,
            keypoints=drawn.get(OutputKind.POINTS),
            skeleton=skeleton,
        )
    proposals = np.asarray(detections.get("proposals", np.zeros((0, 4)))).reshape(-1, 4)
    proposals = proposals[:max_proposals]
    masks = detections.get("proposal_masks")
    scores = detections.get("proposal_scores")
    labelled = scores is not None
    # Without objectness the order (best first) ranks the proposals.
    scores = (
        np.asarray(scores, np.float32)[: len(proposals)]
        if labelled
        else -np.arange(len(proposals), dtype=np.float32)
    )
    return draw_detections(
        image,
        proposals,
        np.zeros(len(proposals), np.int32),
        scores,
        None if masks is None else np.asarray(masks)[: len(proposals)],
        ("proposal",),
        score_threshold=-np.inf,
        labelled=labelled,
    )
