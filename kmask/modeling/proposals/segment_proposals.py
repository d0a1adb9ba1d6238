"""The segment proposal stage: DeepMask-style MLPs over a feature pyramid (FPN section 6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kmask.ops.levels import level_of, sorted_levels
from kmask.ops.losses import masked_mean
from kmask.ops.masks import mask_targets
from kmask.ops.sampling import sample_balanced
from kmask.ops.segment_windows import (
    grid_centers,
    head_scales,
    mask_boxes,
    segment_targets,
    window_boxes,
)

# Salt of the window sampling's stateless draws (kmask.ops.sampling).
SEED_SALT = 4


@keras.saving.register_keras_serializable(package="kmask")
class SegmentProposals(keras.layers.Layer):
    """Dense object segment proposals over a feature pyramid (FPN paper, section 6 and
    appendix A), a stage that takes the place of the ``RPN`` in ``MaskRCNN``.

    Per window size ``w`` in ``window_sizes`` one MLP, shared by all levels: a ``w x w``
    conv to ``hidden_dim`` channels with ReLU, then sibling fully connected layers (1x1
    convs) to one objectness logit and to ``mask_size**2`` mask logits (the paper: 5x5 and
    7x7, 512 hidden units, 14x14 masks). MLP ``j`` of ``n`` on the ``i``-th level handles
    objects of canonical scale ``canonical_scales[i] * 2 ** (j / n)`` (32 .. 512 pixels on
    P2..P6 for the 5x5 MLP, the half octaves ``sqrt 2`` larger for the 7x7 one); each
    feature cell is a window of side ``(1 + padding)`` times that scale centred on the
    cell (25% padding: 40 .. 640 pixels), and its mask covers exactly that window
    (``kmask.ops.segment_windows``).

    Training (ground truth given): objects go to the head of the nearest canonical scale
    in log space (scale = the larger side of the box); a window is positive for an object
    of its head whose box centre lies within ``center_radius`` cells of the window's centre
    on each axis, negative otherwise (``kmask.ops.segment_windows.segment_targets``).
    ``batch_size_per_image`` windows are sampled per image, at most ``positive_fraction``
    positive (128 at 1:3). Losses, both divided by the number of sampled windows in the
    batch (DeepMask's per-example sum, averaged):

    - ``loss_segment_score``: binary cross-entropy of the objectness of every sampled
      window, times ``score_loss_weight``;
    - ``loss_segment_mask``: per-pixel binary cross-entropy averaged over the window's
      mask, of the positive windows only (negatives train only the score), times
      ``mask_loss_weight`` (10: "the mask loss is given 10x higher weight"). The target
      is the matched object's mask resampled into the window (``mask_targets``).

    Inference: scores at all windows, masks at the ``num_proposals`` highest scoring ones
    (1000) and, as the paper, no non-maximum suppression. Optionally (``nms_threshold``
    set; not in the paper) the ``pre_nms_topk`` best windows are suppressed greedily by the
    IoU of their masks' tight boxes (``mask_boxes``) before the ``num_proposals`` best are
    kept. Windows whose centre lies more than ``center_radius`` cells beyond the valid
    image (padding) are never proposed, nor sampled as negatives.

    Decisions where the paper is silent: window centres at cell centres (offset 0.5, as
    the anchors); ties between objects for a window go to the nearest centre; MLP weights
    shared by all levels (as the RPN head); initialization normal(std 0.01), zero biases.

    Args:
      canonical_scales: object scale of the first MLP on each level, finest first.
      window_sizes: input window (conv kernel) of each MLP per level; ``n`` MLPs split an
        octave into ``n`` scales.
      padding: window side = ``(1 + padding)`` x canonical scale.
      hidden_dim: hidden units of each MLP.
      mask_size: side of the predicted masks.
      center_radius: positives' centre tolerance, in cells.
      batch_size_per_image, positive_fraction: window sampling for the losses.
      score_loss_weight, mask_loss_weight: loss weights.
      num_proposals: proposals per image (training and inference).
      nms_threshold: None (the paper), or the IoU of box NMS over the masks' tight boxes.
      pre_nms_topk: windows entering NMS (used only with ``nms_threshold``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(features {"Pk": [B, Hk, Wk, C]}, image_size [B, 2] int32 (h, w),
    targets=None, training=None)``, ``targets`` reading ``gt_boxes [B, G, 4]`` float32
    ``(y1, x1, y2, x2)`` pixels, ``gt_classes [B, G]`` int32 (-1 padding), ``gt_masks [B,
    G, M, M]`` box-frame masks and ``seed [B]`` int64 when present (stateless sampling) ->
    ``(outputs, losses)``: ``outputs = {"proposals" [B, P, 4]`` float32 windows ``(y1,
    x1, y2, x2)`` in pixels (not clipped to the image) best first, ``"proposal_scores"
    [B, P]`` objectness probabilities, ``"proposal_valid" [B, P]`` bool, ``"proposal_masks"
    [B, P, m, m]`` float32 mask probabilities in the window frame``}`` (P =
    ``num_proposals``; invalid entries zero; no gradient), and ``losses`` the two float32
    scalars with ground truth, else ``{}``. ``kmask.ops.masks.paste_masks(masks,
    proposals, image_shape)`` turns the masks into image masks.

    Example::

        >>> import keras, numpy as np
        >>> from kmask.modeling.proposals.segment_proposals import SegmentProposals
        >>> pyramid = {f"P{k}": keras.random.normal((1, 64 >> k, 64 >> k, 8)) for k in range(2, 7)}
        >>> stage = SegmentProposals(hidden_dim=16, num_proposals=50, name="segments")
        >>> outputs, losses = stage(pyramid, np.array([[64, 64]], "int32"))
        >>> tuple(outputs["proposals"].shape), tuple(outputs["proposal_masks"].shape), losses
        ((1, 50, 4), (1, 50, 14, 14), {})
    """

    loss_names = ("loss_segment_score", "loss_segment_mask")

    def __init__(
        self,
        canonical_scales: Sequence[float] = (32.0, 64.0, 128.0, 256.0, 512.0),
        window_sizes: Sequence[int] = (5, 7),
        padding: float = 0.25,
        hidden_dim: int = 512,
        mask_size: int = 14,
        center_radius: float = 1.0,
        batch_size_per_image: int = 128,
        positive_fraction: float = 0.25,
        score_loss_weight: float = 1.0,
        mask_loss_weight: float = 10.0,
        num_proposals: int = 1000,
        nms_threshold: float | None = None,
        pre_nms_topk: int = 2000,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)  # windows stay float32; the MLPs cast themselves
        super().__init__(**kwargs)
        self.supports_jit = False  # top-k over dynamic counts, NMS
        if not canonical_scales or any(s <= 0 for s in canonical_scales):
            raise ValueError(f"canonical_scales: expected positive scales, got {canonical_scales}")
        if not window_sizes or any(w < 1 for w in window_sizes):
            raise ValueError(f"window_sizes: expected positive sizes, got {window_sizes}")
        self.canonical_scales = tuple(float(s) for s in canonical_scales)
        self.window_sizes = tuple(int(w) for w in window_sizes)
        self.padding = float(padding)
        self.hidden_dim = int(hidden_dim)
        self.mask_size = int(mask_size)
        self.center_radius = float(center_radius)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.score_loss_weight = float(score_loss_weight)
        self.mask_loss_weight = float(mask_loss_weight)
        self.num_proposals = int(num_proposals)
        self.nms_threshold = None if nms_threshold is None else float(nms_threshold)
        self.pre_nms_topk = int(pre_nms_topk)
        self.scales = head_scales(self.canonical_scales, len(self.window_sizes))
        common = {
            "kernel_initializer": keras.initializers.RandomNormal(stddev=0.01),
            "dtype": self.dtype_policy,
        }
        self.hidden = [
            keras.layers.Conv2D(
                self.hidden_dim, w, padding="same", activation="relu", name=f"mlp{j}_hidden",
                **common,
            )
            for j, w in enumerate(self.window_sizes)
        ]  # fmt: skip
        self.score = [
            keras.layers.Conv2D(1, 1, name=f"mlp{j}_score", **common)
            for j in range(len(self.window_sizes))
        ]
        self.mask = [
            keras.layers.Dense(self.mask_size**2, name=f"mlp{j}_mask", **common)
            for j in range(len(self.window_sizes))
        ]

    def build(
        self,
        features_shape: dict[str, tuple[int | None, ...]],
        image_size_shape: tuple[int | None, ...] | None = None,
        targets_shape: dict[str, tuple[int | None, ...]] | None = None,
    ) -> None:
        channels = features_shape[sorted_levels(features_shape)[0]][-1]
        for hidden, score, mask in zip(self.hidden, self.score, self.mask):
            hidden.build((None, None, None, channels))
            score.build((None, None, None, self.hidden_dim))
            mask.build((None, None, self.hidden_dim))
        self.built = True

    def windows(
        self, features: dict[str, tf.Tensor], image_size: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The windows of a pyramid, head by head (``kmask.ops.segment_windows``):
        ``centers [N, 2]`` ``(cy, cx)``, ``strides [N]``, ``heads [N]`` int32, ``boxes [N,
        4]`` ``(y1, x1, y2, x2)`` pixels, and ``candidates [B, N]`` bool (centre at most
        ``center_radius`` cells beyond the valid image ``image_size [B, 2]``)."""
        keys = sorted_levels(features)
        if len(keys) != len(self.canonical_scales):
            raise ValueError(
                f"{len(keys)} pyramid levels {keys} but {len(self.canonical_scales)} "
                f"canonical_scales {self.canonical_scales}"
            )
        centers, strides, heads = [], [], []
        for i, key in enumerate(keys):
            shape = tf.shape(features[key])
            stride = 2 ** level_of(key)
            level_centers = grid_centers(shape[1], shape[2], stride)
            count = tf.shape(level_centers)[0]
            for j in range(len(self.window_sizes)):
                centers.append(level_centers)
                strides.append(tf.fill([count], float(stride)))
                heads.append(tf.fill([count], i * len(self.window_sizes) + j))
        centers, strides, heads = (tf.concat(t, 0) for t in (centers, strides, heads))
        sides = (1.0 + self.padding) * tf.gather(tf.constant(self.scales), heads)
        reach = (self.center_radius * strides)[None, :, None]
        image_size = tf.cast(image_size, tf.float32)[:, None, :]
        return {
            "centers": centers,
            "strides": strides,
            "heads": heads,
            "boxes": window_boxes(centers, sides),
            "candidates": tf.reduce_all(centers[None] < image_size + reach, axis=-1),
        }

    def _run_mlps(self, features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """Score logits [B, N] of all windows and each head's hidden rows [B, Nh, D]."""
        logits, hidden_rows = [], []
        for key in sorted_levels(features):
            batch = tf.shape(features[key])[0]
            for hidden_layer, score_layer in zip(self.hidden, self.score):
                hidden = hidden_layer(features[key])
                logits.append(tf.reshape(tf.cast(score_layer(hidden), tf.float32), [batch, -1]))
                hidden_rows.append(tf.reshape(hidden, [batch, -1, self.hidden_dim]))
        return tf.concat(logits, axis=1), hidden_rows

    def _mask_logits(self, hidden_rows: list[tf.Tensor], indices: tf.Tensor) -> tf.Tensor:
        """Mask logits [B, K, m, m] float32 of the windows ``indices [B, K]`` (positions in
        the concatenation of all heads), each through its own MLP's mask layer."""
        result = None
        offset = 0
        for head, rows in enumerate(hidden_rows):
            count = tf.shape(rows)[1]
            local = tf.clip_by_value(indices - offset, 0, count - 1)
            mlp = head % len(self.window_sizes)
            logits = tf.cast(self.mask[mlp](tf.gather(rows, local, batch_dims=1)), tf.float32)
            mine = ((indices >= offset) & (indices < offset + count))[..., None]
            result = logits if result is None else tf.where(mine, logits, result)
            offset += count
        shape = tf.concat([tf.shape(indices), [self.mask_size, self.mask_size]], 0)
        return tf.reshape(result, shape)

    def call(
        self,
        features: dict[str, tf.Tensor],
        image_size: tf.Tensor,
        targets: dict[str, tf.Tensor] | None = None,
        training: bool | None = None,
    ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        windows = self.windows(features, image_size)
        logits, hidden_rows = self._run_mlps(features)
        outputs = tf.nest.map_structure(
            tf.stop_gradient,
            self._proposals(logits, hidden_rows, windows["boxes"], windows["candidates"]),
        )
        if targets is None:
            return outputs, {}
        gt_boxes = tf.cast(targets["gt_boxes"], tf.float32)
        labels, matched = segment_targets(
            gt_boxes,
            targets["gt_classes"],
            windows["centers"],
            windows["strides"],
            windows["heads"],
            self.scales,
            windows["candidates"],
            self.center_radius,
        )
        indices, sampled = sample_balanced(
            labels,
            self.batch_size_per_image,
            self.positive_fraction,
            seeds=targets.get("seed"),
            salt=SEED_SALT,
        )
        count = tf.reduce_sum(tf.cast(sampled >= 0, tf.float32))
        score_bce = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(sampled == 1, tf.float32),
            logits=tf.gather(logits, indices, batch_dims=1),
        )
        mask_target = mask_targets(
            targets["gt_masks"],
            gt_boxes,
            tf.gather(windows["boxes"], indices),
            tf.gather(matched, indices, batch_dims=1),
            self.mask_size,
        )
        mask_bce = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=mask_target, logits=self._mask_logits(hidden_rows, indices)
        )
        losses = {
            "loss_segment_score": self.score_loss_weight
            * masked_mean(score_bce, sampled >= 0, count),
            "loss_segment_mask": self.mask_loss_weight
            * masked_mean(tf.reduce_mean(mask_bce, axis=[2, 3]), sampled == 1, count),
        }
        return outputs, losses

    def _proposals(
        self,
        logits: tf.Tensor,
        hidden_rows: list[tf.Tensor],
        boxes: tf.Tensor,
        candidates: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """The best windows by score: windows, scores, valid flags and masks."""
        keys = tf.where(candidates, logits, -np.inf)
        first = self.pre_nms_topk if self.nms_threshold is not None else self.num_proposals
        indices, valid = _top_k(keys, first)
        masks = tf.sigmoid(self._mask_logits(hidden_rows, indices))
        windows = tf.gather(boxes, indices)
        scores = tf.sigmoid(tf.gather(logits, indices, batch_dims=1))
        if self.nms_threshold is not None:
            boxes = mask_boxes(masks, windows)
            keep, num_kept = tf.image.non_max_suppression_padded(
                boxes,
                tf.where(valid, scores, -1.0),
                max_output_size=self.num_proposals,
                iou_threshold=self.nms_threshold,
                score_threshold=0.0,
                pad_to_max_output_size=True,
                canonicalized_coordinates=True,
            )
            valid = tf.range(self.num_proposals)[None, :] < num_kept[:, None]
            keep = tf.where(valid, keep, 0)
            windows, scores, masks = (
                tf.gather(t, keep, batch_dims=1) for t in (windows, scores, masks)
            )
        return {
            "proposals": tf.where(valid[..., None], windows, 0.0),
            "proposal_scores": tf.where(valid, scores, 0.0),
            "proposal_valid": valid,
            "proposal_masks": tf.where(valid[..., None, None], masks, 0.0),
        }

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]], *args: Any, **kwargs: Any
    ) -> dict[str, tuple[int | None, ...]]:
        """Shapes of the ``outputs`` dict of ``call`` (the losses are scalars)."""
        batch = features_shape[sorted_levels(features_shape)[0]][0]
        count, size = self.num_proposals, self.mask_size
        return {
            "proposals": (batch, count, 4),
            "proposal_scores": (batch, count),
            "proposal_valid": (batch, count),
            "proposal_masks": (batch, count, size, size),
        }


def _top_k(keys: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Indices [B, k] of the largest ``keys [B, N]`` (padded with 0 when N < k) and whether
    each is a real, finite entry [B, k]."""
    available = tf.minimum(k, tf.shape(keys)[1])
    values, indices = tf.math.top_k(keys, k=available)
    padding = [[0, 0], [0, k - available]]
    indices = tf.ensure_shape(tf.pad(indices, padding), [None, k])
    valid = tf.ensure_shape(tf.pad(values > -np.inf, padding), [None, k])
    return indices, valid
