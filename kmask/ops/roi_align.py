"""RoIAlign: one entry point over the custom op and its pure-TensorFlow twin.

Contract (DESIGN.md): semantics of ``torchvision.ops.roi_align`` / ONNX ``RoiAlign`` (avg).
``aligned=True`` shifts by half a pixel (ONNX ``half_pixel``), ``aligned=False`` is the
original paper's op (ONNX ``output_half_pixel``, RoI size clamped to >= 1);
``sampling_ratio=0`` takes ``ceil(roi_size / output_size)`` samples per bin; samples outside
``[-1, H]`` contribute zero. Boxes are (y1, x1, y2, x2) float32 in input pixels, features
NHWC. Boxes get no gradient, as in every peer implementation.

``implementation``: ``"custom"`` is the C++/CUDA op ``Kmask>RoiAlign`` (see
``kmask.native.custom_ops``), ``"tf"`` the pure-TensorFlow twin (same numbers to 1e-5,
XLA-compilable), ``"auto"`` takes the custom op when it is built for the running TensorFlow
(and has CUDA kernels when GPUs are visible), else warns once and takes ``"tf"``; with GPUs
visible and op determinism on (``train.deterministic``) it takes ``"tf"`` too, as the custom
op's CUDA gradient (atomics) refuses to run then. The environment variable
``KMASK_ROI_ALIGN`` (``custom`` or ``tf``) overrides ``"auto"``.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kmask.native import custom_ops
from kmask.ops.levels import level_of
from kmask.ops.roi_align_tf import (
    MAX_GRID,
    MAX_OUTPUT_SIZE,
    multi_level_roi_align_tf,
    roi_align_tf,
)

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "custom", "tf")
_warned: set[str] = set()


def resolve_implementation(implementation: str = "auto") -> str:
    """Maps ``"auto"``/``"custom"``/``"tf"`` to the implementation that will run.

    Raises:
      ValueError: unknown name (also for a bad ``KMASK_ROI_ALIGN``).
      RuntimeError: ``"custom"`` asked for but the op cannot be built or loaded.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        forced = os.environ.get("KMASK_ROI_ALIGN")
        if forced:
            if forced not in ("custom", "tf"):
                raise ValueError(f"KMASK_ROI_ALIGN must be 'custom' or 'tf', got {forced!r}")
            implementation = forced
        else:
            status = custom_ops.status()
            if status.auto_choice == "tf" and "auto" not in _warned:
                _warned.add("auto")
                fix = f"; fix: {status.fix}" if status.fix else ""
                logger.warning(
                    "kmask: RoIAlign uses the pure TensorFlow implementation (%s%s)",
                    status.reason,
                    fix,
                )
            return status.auto_choice
    if implementation == "custom" and custom_ops.load() is None:
        raise RuntimeError(
            f"RoIAlign custom op unavailable: {custom_ops.status().reason}; "
            "use implementation='tf' or run `kmask build-ops` to see the error"
        )
    return implementation


def output_size_pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    """(out_h, out_w) from an integer (Python or NumPy) or a pair of them, each in
    ``[1, MAX_OUTPUT_SIZE]``; ValueError naming output_size otherwise."""
    try:
        if isinstance(output_size, (str, bytes)):
            raise TypeError
        items = (output_size, output_size) if _is_integer(output_size) else tuple(output_size)
        size = tuple(operator.index(s) for s in items if _is_integer(s))
    except TypeError:
        size = ()
    if len(size) != 2 or not all(1 <= s <= MAX_OUTPUT_SIZE for s in size):
        raise ValueError(
            f"output_size must be an integer in [1, {MAX_OUTPUT_SIZE}] or (height, width) of "
            f"such integers, got {output_size!r}"
        )
    return size  # type: ignore[return-value]


def _is_integer(value: object) -> bool:
    """A Python or NumPy integer (not a bool)."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def _sampling_ratio(sampling_ratio: int) -> int:
    """``sampling_ratio`` as an int in ``[0, MAX_GRID]``; ValueError naming it otherwise."""
    if not _is_integer(sampling_ratio) or not 0 <= sampling_ratio <= MAX_GRID:
        raise ValueError(
            f"sampling_ratio must be an integer in [0, {MAX_GRID}] (0 = adaptive), got "
            f"{sampling_ratio!r}"
        )
    return int(sampling_ratio)


@tf.RegisterGradient("Kmask>RoiAlign")
def _roi_align_grad(op: tf.Operation, grad: tf.Tensor) -> list[tf.Tensor | None]:
    features, boxes, box_indices = op.inputs
    grad_features = custom_ops.load().kmask_roi_align_grad(
        grad,
        boxes,
        box_indices,
        tf.shape(features, out_type=tf.int32),
        pooled_height=op.get_attr("pooled_height"),
        pooled_width=op.get_attr("pooled_width"),
        spatial_scale=op.get_attr("spatial_scale"),
        sampling_ratio=op.get_attr("sampling_ratio"),
        aligned=op.get_attr("aligned"),
    )
    return [grad_features, None, None]


def roi_align(
    features: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    implementation: str = "auto",
) -> tf.Tensor:
    """RoIAlign of one feature map.

    Args:
      features: [B, H, W, C] float16, bfloat16, float32 or float64.
      boxes: [K, 4] (y1, x1, y2, x2) in input pixels (cast to float32).
      box_indices: [K] int32 image of each box in [0, B).
      output_size: int or (out_h, out_w), each in [1, 1024].
      spatial_scale: feature pixels per input pixel (1 / stride).
      sampling_ratio: samples per bin and axis in [0, 256]; 0 = adaptive
        ceil(roi_size / output_size), capped at 256.
      aligned: half-pixel shift (True) or the original paper's op (False).
      implementation: "auto", "custom" or "tf".

    Returns:
      [K, out_h, out_w, C] in the dtype of ``features``.
    """
    out_h, out_w = output_size_pair(output_size)
    sampling_ratio = _sampling_ratio(sampling_ratio)
    features = tf.convert_to_tensor(features)
    boxes = tf.cast(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    if resolve_implementation(implementation) == "custom":
        return custom_ops.load().kmask_roi_align(
            features,
            boxes,
            box_indices,
            pooled_height=out_h,
            pooled_width=out_w,
            spatial_scale=float(spatial_scale),
            sampling_ratio=int(sampling_ratio),
            aligned=bool(aligned),
        )
    tf.debugging.assert_rank(features, 4, message="features must be [B, H, W, C]")
    tf.debugging.assert_equal(tf.shape(boxes)[-1], 4, message="boxes must be [K, 4]")
    tf.debugging.assert_greater_equal(box_indices, 0, message="box_indices out of range")
    tf.debugging.assert_less(
        box_indices, tf.shape(features)[0], message="box_indices out of range [0, batch)"
    )
    return roi_align_tf(
        features, boxes, box_indices, (out_h, out_w), spatial_scale, sampling_ratio, aligned
    )


def assign_levels(
    boxes: tf.Tensor,
    min_level: int,
    max_level: int,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> tf.Tensor:
    """FPN level of each box (FPN paper eq. 1): floor(k0 + log2(sqrt(w h) / 224)), clamped.

    Args:
      boxes: [..., 4] float32 (y1, x1, y2, x2) in input pixels.

    Returns:
      [...] int32 levels in [min_level, max_level]; empty or non-finite boxes go to
      ``min_level``. With the defaults sqrt(wh) = 112, 224, 448 start levels 3, 4, 5.
    """
    boxes = tf.cast(boxes, tf.float32)
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    area = height * width
    valid = tf.math.is_finite(area) & (area > 0.0)
    size = tf.sqrt(tf.where(valid, area, 1.0))
    level = tf.floor(canonical_level + tf.math.log(size / canonical_size) / tf.math.log(2.0))
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    return tf.where(valid, tf.cast(level, tf.int32), min_level)


def _levels(features: Mapping[str, tf.Tensor]) -> dict[int, tf.Tensor]:
    levels = {}
    for key, value in features.items():
        levels[level_of(key)] = value
    keys = sorted(levels)
    if not keys or keys != list(range(keys[0], keys[-1] + 1)):
        raise ValueError(f"feature levels must be consecutive, got {sorted(features)}")
    return levels


def multi_level_roi_align(
    features: Mapping[str, tf.Tensor],
    boxes: tf.Tensor,
    output_size: int | Sequence[int],
    sampling_ratio: int = 0,
    aligned: bool = True,
    implementation: str = "auto",
) -> tf.Tensor:
    """RoIAlign of each box on its FPN level (``assign_levels``) in one pass.

    Args:
      features: {"P2": [B, H/4, W/4, C], ..., "P5": [B, H/32, W/32, C]}: consecutive levels,
        level k has stride 2**k. Pass the levels boxes may be pooled from (P2..P5 in
        Mask R-CNN); the assignment is clamped to them.
      boxes: [B, N, 4] float32 (y1, x1, y2, x2) in input pixels.
      output_size: int or (out_h, out_w).

    Returns:
      [B, N, out_h, out_w, C] in input order, dtype of the features.
    """
    out_h, out_w = output_size_pair(output_size)
    sampling_ratio = _sampling_ratio(sampling_ratio)
    levels = _levels(features)
    keys = sorted(levels)
    boxes = tf.cast(boxes, tf.float32)
    box_levels = assign_levels(boxes, keys[0], keys[-1])
    if resolve_implementation(implementation) == "tf":
        return multi_level_roi_align_tf(
            levels, boxes, box_levels, (out_h, out_w), sampling_ratio, aligned
        )
    # Custom op: one call per level (not per box) on that level's boxes, stitched back.
    batch, num = tf.shape(boxes)[0], tf.shape(boxes)[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    images = tf.repeat(tf.range(batch), num)
    partitions = tf.reshape(box_levels, [-1]) - keys[0]
    positions = tf.dynamic_partition(tf.range(batch * num), partitions, len(keys))
    level_boxes = tf.dynamic_partition(flat_boxes, partitions, len(keys))
    level_images = tf.dynamic_partition(images, partitions, len(keys))
    pooled = [
        roi_align(
            levels[key],
            level_boxes[i],
            level_images[i],
            (out_h, out_w),
            spatial_scale=2.0**-key,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            implementation="custom",
        )
        for i, key in enumerate(keys)
    ]
    stitched = tf.dynamic_stitch(positions, pooled)
    return tf.reshape(stitched, tf.concat([[batch, num], tf.shape(stitched)[1:]], 0))
