"""Experiment configuration: a frozen dataclass schema and ``load_config``.

Every default is the value of the Mask R-CNN / FPN papers (see ``shared/papers``) unless a
comment says otherwise. Experiment YAML files in ``configs/`` hold overrides of this schema
only; ``load_config`` rejects unknown keys, naming the key and the file.

Each section belongs to one part of the package: ``model`` to ``kmask.modeling`` (read only
by ``kmask.modeling.factory``), ``data`` to ``kmask.data``, ``train`` and ``eval`` to the
training and evaluation loops.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kmask.errors import ConfigError

# The model sections below are the constructor arguments of the layers they configure,
# field for field: ``kmask.modeling.factory`` passes each section as keyword arguments and
# the layers' ``get_config()`` returns the same keys. A hyperparameter is written once, here.


# ``train.trainable`` presets -> torchvision's ``trainable_backbone_layers`` (how many of
# its layer4, layer3, layer2, layer1, conv1 train; kmask.training.TrainablePreset).
TRAINABLE_PRESETS = {"heads": 0, "5+": 1, "4+": 2, "3+": 3, "all": 5}

# Bounds of the RoIAlign arguments (kmask.ops.roi_align_tf.MAX_GRID / MAX_OUTPUT_SIZE, the
# custom op's KMASK_MAX_GRID / KMASK_MAX_POOLED).
MAX_POOLER_SAMPLING_RATIO = 256
MAX_POOLER_RESOLUTION = 1024


def _check_pooler(head: Any, where: str) -> None:
    """Range checks of a head's ``pooler_resolution`` and ``pooler_sampling_ratio``."""
    if not 1 <= head.pooler_resolution <= MAX_POOLER_RESOLUTION:
        raise ConfigError(
            f"{where}.pooler_resolution: expected an integer in [1, {MAX_POOLER_RESOLUTION}], "
            f"got {head.pooler_resolution}"
        )
    if not 0 <= head.pooler_sampling_ratio <= MAX_POOLER_SAMPLING_RATIO:
        raise ConfigError(
            f"{where}.pooler_sampling_ratio: expected an integer in "
            f"[0, {MAX_POOLER_SAMPLING_RATIO}] (0 = adaptive), got {head.pooler_sampling_ratio}"
        )


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


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Backbone: ``type`` names a registered backbone; the other fields are its arguments.

    ``type: resnet``: ResNet-50/101/152 and ResNeXt (``groups`` x ``width_per_group``;
    ResNeXt-101 32x8d = depth 101, groups 32, width_per_group 8), C2..C5 at strides 4..32.
    """

    type: str = "resnet"
    depth: int = 50
    # Stages frozen from the start: 0 = nothing, 1 = stem, 2 = stem + res2 (papers' default).
    freeze_at: int = 2
    # "frozen_bn" (fixed affine from pretraining, papers' default), "bn", "gn" or "none".
    norm: str = "frozen_bn"
    # Normalization epsilon (keras.applications: 1.001e-5; torchvision's COCO weights: 0.0).
    norm_epsilon: float = 1e-5
    # Stride 2 on the first 1x1 conv of a stage (MSRA / Caffe, keras.applications,
    # detectron2's R-50/R-101) or, False, on the 3x3 conv (torchvision's "v1.5", ResNeXt).
    stride_in_1x1: bool = True
    # Convolutions with a bias (keras.applications) or without (detectron2, torchvision).
    conv_bias: bool = True
    groups: int = 1
    width_per_group: int = 64
    # Keras-applications ResNet weights file (.h5 / .weights.h5) on disk; None = random init.
    weights: str | None = None
    # Levels returned: (2, 3, 4, 5) for an FPN; (4,) for the ResNet-C4 models, whose conv5
    # runs per RoI in model.res5_head.
    out_levels: tuple[int, ...] = (2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class FPNConfig:
    """Feature pyramid: P2..P5 from C2..C5, P6 by stride-2 subsampling of P5 (RPN only)."""

    num_channels: int = 256
    min_level: int = 2
    max_level: int = 6
    # Normalization after the lateral and output convs ("bn" in torchvision's v2 model).
    norm: str = "none"


@dataclasses.dataclass(frozen=True)
class RPNConfig:
    """Region proposal network stage: anchors, head, proposals, targets and losses."""

    # Square root of the anchor area on each level P2..P6: areas 32^2 .. 512^2. An entry may
    # be a list of sizes on one level: [[32, 64, 128, 256, 512]] is the single-level RPN of
    # the ResNet-C4 models (Faster R-CNN's 15 anchors per position on C4).
    anchor_sizes: tuple[float | tuple[float, ...], ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    # Height / width: 1:2, 1:1, 2:1 (15 anchors over the pyramid).
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Anchor centre inside its feature cell, in cells (0.5 = the cell's centre; detectron2
    # and torchvision use 0.0).
    anchor_offset: float = 0.5
    # Round the cell anchors to whole pixels (torchvision).
    anchor_rounding: bool = False
    # Shared 3x3 convs of the head (torchvision's v2 model: 2) and their normalization.
    num_conv: int = 1
    norm: str = "none"
    # Anchor labels (Faster R-CNN / FPN): IoU >= 0.7 positive (and each ground truth's best
    # anchors), IoU < 0.3 negative, the rest ignored.
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    # Anchors sampled per image for the loss, half positive at most (1:1).
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    # Proposals: top-k anchors per level before NMS, NMS IoU, top-k per image after NMS
    # (FPN: 2000 RoIs per image for training, 1000 for testing).
    pre_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 2000
    post_nms_topk_test: int = 1000
    nms_threshold: float = 0.7
    # Proposals whose height or width is not above this (pixels, after clipping) are dropped.
    min_box_size: float = 0.0
    # Delta weights (dy, dx, dh, dw) of the anchor -> box parameterization.
    box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # Smooth-L1 transition point of the box loss: 1/9 as Detectron and torchvision (0 = L1).
    smooth_l1_beta: float = 1.0 / 9.0
    cls_loss_weight: float = 1.0
    box_loss_weight: float = 1.0


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


@dataclasses.dataclass(frozen=True)
class BoxHeadConfig:
    """Box branch: RoIAlign 7x7 -> [convs] -> 2 fc 1024 -> K+1 scores and per-class deltas.

    The box head owns its loss (softmax cross-entropy, smooth L1) and its inference
    (per-class NMS). torchvision's v2 head: ``num_conv: 4, norm: bn, num_fc: 1``.
    """

    pooler_resolution: int = 7
    # RoIAlign samples per bin and axis: 2 = the paper's four sampled locations; 0 = adaptive
    # (detectron2).
    pooler_sampling_ratio: int = 2
    # Half-pixel-corrected RoIAlign (detectron2's ROIAlignV2). The papers' op and torchvision:
    # false.
    pooler_aligned: bool = True
    num_conv: int = 0
    conv_dim: int = 256
    norm: str = "none"
    num_fc: int = 2
    fc_dim: int = 1024
    # "flatten" the pooled RoI (FPN head) or "average" it over its cells (the ResNet-C4
    # head of Mask R-CNN figure 3, left: res5 -> average pool -> class and box outputs).
    pool: str = "flatten"
    # Predict deltas for the background slot too (torchvision's layout; never used).
    predict_background: bool = False
    # Delta weights (dy, dx, dh, dw) of the proposal -> box parameterization.
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    # Smooth-L1 transition point of the box loss (Fast R-CNN: 1.0; 0.0 = plain L1).
    smooth_l1_beta: float = 1.0
    cls_loss_weight: float = 1.0
    box_loss_weight: float = 1.0
    # Inference: score threshold, per-class NMS IoU, detections kept per image.
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    # Detections whose clipped height or width is below this (pixels) are dropped before
    # NMS (0 keeps all; torchvision: 1e-2; detectron2 drops empty boxes from its results:
    # 1e-6).
    min_box_size: float = 0.0

    def __post_init__(self) -> None:
        _check_pooler(self, "model.box_head")
        if self.pool not in ("flatten", "average"):
            raise ConfigError(
                f"model.box_head.pool: expected flatten or average, got {self.pool!r}"
            )


@dataclasses.dataclass(frozen=True)
class Res5HeadConfig:
    """The ResNet-C4 RoI trunk (Mask R-CNN figure 3, left; ``Res5Head``): RoIAlign on C4,
    then the backbone's conv5 stage per RoI, 7x7x2048 maps shared by the box head (average
    pool) and the mask head (deconv to 14x14). The paper: RoIAlign 7x7, conv5's first block
    with stride 1. detectron2's ``Res5ROIHeads``: ``pooler_resolution: 14``, ``stride: 2``,
    ``pooler_sampling_ratio: 0``. The conv5 layout (norm, strides, groups) is the backbone's.
    """

    pooler_resolution: int = 7
    pooler_sampling_ratio: int = 2
    pooler_aligned: bool = True
    stride: int = 1

    def __post_init__(self) -> None:
        _check_pooler(self, "model.res5_head")
        if self.stride not in (1, 2):
            raise ConfigError(f"model.res5_head.stride: expected 1 or 2, got {self.stride}")

    @property
    def output_side(self) -> int:
        """Side of the conv5 maps the heads receive: ``ceil(pooler_resolution / stride)``."""
        return -(-self.pooler_resolution // self.stride)


@dataclasses.dataclass(frozen=True)
class MaskHeadConfig:
    """Mask branch: RoIAlign 14x14 -> 4 conv3x3 -> deconv 2x2 s2 -> 1x1 conv, 28x28 masks."""

    pooler_resolution: int = 14
    pooler_sampling_ratio: int = 2
    pooler_aligned: bool = True
    num_conv: int = 4
    conv_dim: int = 256
    norm: str = "none"
    # Predict a mask for the background slot too (torchvision's layout; never used).
    predict_background: bool = False
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_pooler(self, "model.mask_head")


@dataclasses.dataclass(frozen=True)
class KeypointHeadConfig:
    """Keypoint branch (Mask R-CNN section 5): RoIAlign 14x14 -> 8 conv3x3 512 -> deconv 4x4
    s2 -> 2x bilinear, 56x56 heatmap logits per keypoint, softmax cross-entropy."""

    # Keypoints per instance: the length of the dataset's categories' ``keypoints`` list.
    num_keypoints: int = 17
    pooler_resolution: int = 14
    # detectron2: adaptive (0), aligned; torchvision: 2 samples, not aligned.
    pooler_sampling_ratio: int = 0
    pooler_aligned: bool = True
    num_conv: int = 8
    conv_dim: int = 512
    norm: str = "none"
    # Loss / number of labelled keypoints in the batch (torchvision; detectron2's default);
    # false: / (images * foreground RoI slots * num_keypoints) (detectron2's alternative).
    normalize_by_visible_keypoints: bool = True
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_pooler(self, "model.keypoint_head")
        if self.num_keypoints < 1:
            raise ConfigError("model.keypoint_head.num_keypoints: expected a positive integer")


@dataclasses.dataclass(frozen=True)
class SegmentProposalsConfig:
    """FPN segment proposals (FPN paper section 6 and appendix A; ``SegmentProposals``):
    DeepMask-style MLPs on P2..P6 predicting a mask and an objectness score per window.
    Replaces the RPN; needs ``box_head: null`` and ``mask_head: null``. The paper's FPN
    has ``d = 128`` (``model.fpn.num_channels: 128``)."""

    # Object scale (larger box side) of the first MLP on each level P2..P6.
    canonical_scales: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    # Input window of each MLP per level: 5x5, and 7x7 (~5 sqrt 2) for the half octaves
    # (scale x sqrt 2); one entry = one MLP per octave (Table 6's single-MLP rows).
    window_sizes: tuple[int, ...] = (5, 7)
    # Window side = (1 + padding) x canonical scale: 25% -> 40 .. 640 pixels (5x5 MLP).
    padding: float = 0.25
    # Hidden units of each MLP (its w x w conv) and side of the predicted masks.
    hidden_dim: int = 512
    mask_size: int = 14
    # Positives: the object's centre within this many cells of the window's (+-1 cell).
    center_radius: float = 1.0
    # Windows sampled per image for the losses (128 per image), 1:3 positive:negative.
    batch_size_per_image: int = 128
    positive_fraction: float = 0.25
    # "The mask loss is given 10x higher weight than the score loss."
    score_loss_weight: float = 1.0
    mask_loss_weight: float = 10.0
    # Masks at the highest scoring windows: 1000 per image.
    num_proposals: int = 1000
    # The paper does no NMS (null). A value: greedy NMS at this IoU over the tight boxes of
    # the masks of the pre_nms_topk best windows.
    nms_threshold: float | None = None
    pre_nms_topk: int = 2000

    def __post_init__(self) -> None:
        where = "model.segment_proposals"
        if not self.canonical_scales or min(self.canonical_scales) <= 0:
            raise ConfigError(f"{where}.canonical_scales: expected positive scales")
        if list(self.canonical_scales) != sorted(set(self.canonical_scales)):
            raise ConfigError(f"{where}.canonical_scales: expected increasing scales")
        if not self.window_sizes or min(self.window_sizes) < 1:
            raise ConfigError(f"{where}.window_sizes: expected positive window sizes")
        for name in ("hidden_dim", "mask_size", "batch_size_per_image", "num_proposals"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: expected a positive integer")
        if self.pre_nms_topk < self.num_proposals:
            raise ConfigError(f"{where}.pre_nms_topk: expected at least num_proposals")
        for name in ("padding", "score_loss_weight", "mask_loss_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: expected a number >= 0")
        if self.center_radius <= 0:
            raise ConfigError(f"{where}.center_radius: expected a positive number of cells")
        if not 0.0 < self.positive_fraction <= 1.0:
            raise ConfigError(f"{where}.positive_fraction: expected a value in (0, 1]")
        if self.nms_threshold is not None and not 0.0 < self.nms_threshold <= 1.0:
            raise ConfigError(f"{where}.nms_threshold: expected a value in (0, 1] or null")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Mask R-CNN with ResNet-FPN. ``num_classes`` counts foreground classes only.

    Detector modes: Mask R-CNN (default); Faster R-CNN with FPN (``mask_head: null``); RPN
    only (``box_head: null`` and ``mask_head: null``, the FPN paper's proposal experiments).
    Segment proposals (``segment_proposals`` set, ``box_head`` and ``mask_head`` null): the
    FPN paper's section 6 mask proposals in place of the RPN.
    ResNet-C4 (``fpn: null`` with ``res5_head``, ``backbone.out_levels: [4]``, one RPN
    level): Mask R-CNN or Faster R-CNN whose heads share conv5 run per RoI.
    """

    num_classes: int = 80
    input: InputConfig = InputConfig()
    backbone: BackboneConfig = BackboneConfig()
    # null for the ResNet-C4 models (backbone maps go straight to the RPN and res5_head).
    fpn: FPNConfig | None = FPNConfig()
    rpn: RPNConfig = RPNConfig()
    roi_heads: ROIHeadsConfig = ROIHeadsConfig()
    box_head: BoxHeadConfig | None = BoxHeadConfig()
    mask_head: MaskHeadConfig | None = MaskHeadConfig()
    # Keypoint R-CNN: set a section (``keypoint_head: {}`` for the paper's head) to predict
    # keypoints; ``mask_head: null`` with it is the paper's keypoint-only model.
    keypoint_head: KeypointHeadConfig | None = None
    # ResNet-C4: the RoI trunk every head runs on (set with fpn: null).
    res5_head: Res5HeadConfig | None = None
    # FPN segment proposals (FPN section 6) in place of the RPN; needs box_head: null and
    # mask_head: null.
    segment_proposals: SegmentProposalsConfig | None = None
    # "auto" | "custom" | "tf": which RoIAlign kernel the model uses (see kmask.ops.roi_align).
    roi_align_implementation: str = "auto"

    def __post_init__(self) -> None:
        if self.num_classes <= 0:
            raise ConfigError("model.num_classes: expected a positive integer")
        if self.mask_head is not None and self.box_head is None:
            raise ConfigError(
                "model.mask_head needs model.box_head (masks are predicted on the detected "
                "boxes); set both to null for an RPN-only model"
            )
        if self.keypoint_head is not None and self.box_head is None:
            raise ConfigError(
                "model.keypoint_head needs model.box_head (keypoints are predicted on the "
                "detected boxes)"
            )
        if self.segment_proposals is not None and (
            self.box_head is not None or self.mask_head is not None
        ):
            raise ConfigError(
                "model.segment_proposals replaces the RPN of a proposal-only model: set "
                "model.box_head: null and model.mask_head: null"
            )
        self._check_c4()

    def _check_c4(self) -> None:
        """A ResNet-C4 model: ``res5_head`` without FPN, on the backbone's C4 alone."""
        if (self.fpn is None) != (self.res5_head is not None):
            raise ConfigError(
                "model.fpn: null and model.res5_head go together (the ResNet-C4 models); "
                f"got fpn {'null' if self.fpn is None else 'set'} and res5_head "
                f"{'null' if self.res5_head is None else 'set'}"
            )
        if self.res5_head is None:
            return
        if tuple(self.backbone.out_levels) != (4,):
            raise ConfigError(
                "model.backbone.out_levels: a ResNet-C4 model (model.res5_head) needs [4], "
                f"got {list(self.backbone.out_levels)}"
            )
        if self.box_head is None or self.keypoint_head is not None:
            raise ConfigError(
                "model.res5_head: a ResNet-C4 model needs model.box_head and has no keypoint_head"
            )
        side = self.res5_head.output_side
        if self.mask_head is not None and self.mask_head.pooler_resolution != side:
            raise ConfigError(
                f"model.mask_head.pooler_resolution: the C4 mask head runs on the {side}x{side} "
                f"maps of model.res5_head, got {self.mask_head.pooler_resolution}"
            )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline: resizing, augmentation and padding of images and ground truth.

    Read only by ``kmask.data``; the batch format it produces is described there.
    """

    # Shorter side; several values = one drawn at random per image (multi-scale training).
    # Evaluation uses the largest value.
    min_size: tuple[int, ...] = (800,)
    # Upper bound of the longer side after resizing (the shorter side gives way).
    max_size: int = 1333
    # Resized side = side * scale rounded ("round": detectron2) or floored ("floor":
    # torchvision's interpolate).
    resize_rounding: str = "round"
    # Images are zero-padded at the bottom/right to a multiple of this (FPN strides up to 32).
    size_divisibility: int = 32
    # Fixed padded (height, width) for static shapes (TPU/XLA); images are then also shrunk
    # to fit inside it. None = pad each image to size_divisibility and each batch to its
    # largest image.
    image_size: tuple[int, ...] | None = None
    # Ground truth is padded (class -1) or truncated to this many instances per image.
    max_instances: int = 100
    # Side of the per-instance masks, cropped to their own box (Model Garden's crop size).
    mask_size: int = 112
    # Training's shorter side from min_size: "choice" draws one of the values, "range" an
    # integer in [min(min_size), max(min_size)] (detectron2's MIN_SIZE_TRAIN_SAMPLING).
    min_size_sampling: str = "choice"
    # Random left-right flip in training (boxes, masks and keypoints follow).
    horizontal_flip: bool = True
    # Training skips images without usable (non-crowd) instances; evaluation keeps all.
    drop_images_without_annotations: bool = True
    # TFRecord sources: serialized records held for shuffling in training (JSON sources
    # shuffle the whole list of image ids).
    shuffle_buffer: int = 1024
    # Seed of shuffling, flips and scale choice; None = different on every run.
    seed: int | None = None
    # Parallel calls of the decoding and transform maps; -1 = tf.data.AUTOTUNE.
    num_parallel_calls: int = -1
    # Bad input (missing/corrupt image, invalid annotation) raises instead of being skipped.
    strict: bool = False
    # Read COCO file_name values that are absolute or leave the images folder through "..";
    # by default such images are skipped (or refused under strict).
    allow_outside_images: bool = False

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"data.seed: expected an integer >= 0 or null, got {self.seed}")
        if self.num_parallel_calls < 1 and self.num_parallel_calls != -1:
            raise ConfigError(
                "data.num_parallel_calls: expected an integer >= 1, or -1 for autotune, got "
                f"{self.num_parallel_calls}"
            )
        if self.shuffle_buffer <= 0:
            raise ConfigError("data.shuffle_buffer: expected a positive integer")
        if not self.min_size or min(self.min_size) <= 0:
            raise ConfigError(f"data.min_size: expected positive sizes, got {self.min_size!r}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) <= 0):
            raise ConfigError(
                f"data.image_size: expected (height, width) or null, got {self.image_size!r}"
            )
        if self.resize_rounding not in ("round", "floor"):
            raise ConfigError(
                f"data.resize_rounding: expected round or floor, got {self.resize_rounding!r}"
            )
        for name in ("max_size", "size_divisibility", "max_instances", "mask_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name}: expected a positive integer")
        if self.min_size_sampling not in ("choice", "range"):
            raise ConfigError(
                f"data.min_size_sampling: expected choice or range, got {self.min_size_sampling!r}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training data, optimization schedule, checkpoints and logs (``kmask.training``).

    Papers' schedule: 16 images per batch, SGD momentum 0.9, weight decay 1e-4, lr 0.02,
    90k iterations with x0.1 steps at 60k and 80k, linear warmup.
    """

    # Training data: a COCO JSON + the folder its file_name entries are relative to, or
    # TFRecord shards of ``kmask convert-coco`` (categories.json beside them). Relative
    # paths are relative to the working directory; ``kmask train`` flags override them.
    json_path: str | None = None
    images_dir: str | None = None
    tfrecord_pattern: str | None = None
    # Global batch (all replicas together); each replica gets batch_size / replicas.
    batch_size: int = 16
    # Learning rate at reference_batch_size images per batch; the run uses
    # base_learning_rate * batch_size / reference_batch_size (linear scaling rule, Goyal et
    # al. 2017). Step counts are not rescaled.
    base_learning_rate: float = 0.02
    reference_batch_size: int = 16
    momentum: float = 0.9
    # L2 penalty added to the gradient (Caffe / PyTorch semantics), not on biases or
    # normalization parameters.
    weight_decay: float = 1e-4
    max_steps: int = 90_000
    # Steps at which the learning rate is multiplied by lr_decay_factor.
    lr_steps: tuple[int, ...] = (60_000, 80_000)
    lr_decay_factor: float = 0.1
    # Linear warmup from warmup_factor * lr to lr over the first warmup_steps steps.
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    # Clip the global gradient norm (over all replicas) to this value; None = no clipping.
    grad_clip_norm: float | None = None
    # Keras dtype policy: "float32", "mixed_float16" (GPU, with loss scaling) or
    # "mixed_bfloat16" (TPU / recent CPUs and GPUs). Boxes and losses stay float32.
    mixed_precision: str = "float32"
    # Length of a Keras epoch in steps: progress bars, epoch logs and eval_every_epochs.
    steps_per_epoch: int = 1000
    # Checkpoints (run_dir/checkpoints): every N steps and at the end; the last
    # keep_checkpoints are kept.
    checkpoint_every_steps: int = 5000
    keep_checkpoints: int = 3
    # TensorBoard (run_dir/logs): losses and learning rate every log_every steps.
    log_every: int = 20
    # COCO evaluation on the validation set (eval.json_path) every N epochs; 0 = never
    # during training.
    eval_every_epochs: int = 0
    # Validation images drawn with their predicted masks into TensorBoard each epoch.
    num_visualizations: int = 4
    # Seeds weights, sampling and (unless data.seed is set) the input order.
    seed: int = 0
    # Fine-tuning (kmask.training.WeightTransfer, ``kmask train --init-from``): start from
    # a trained or converted kmask model, a run directory, a checkpoint inside one or a
    # .keras file. Weights are copied by name; the class-dependent layers are
    # re-initialized when the class count differs. Not used when resuming a checkpoint.
    init_from: str | None = None
    # With init_from: {class of this run: class of the source}, by name (the training
    # data's categories; the source run directory's categories.json). The per-class units
    # of the class-dependent layers (box_head cls_score and bbox_pred, mask_head predictor;
    # the background's too) are copied from the named source class, whatever the class
    # counts; classes left out keep their fresh initialization. The Mask R-CNN paper's
    # Cityscapes model from COCO: {person: person, car: car, ...}, rider new
    # (configs/mask_rcnn_r50_fpn_cityscapes_from_coco.yaml). null = those layers are copied
    # whole when their shapes match, else re-initialized.
    init_class_map: dict[str, str] | None = None
    # Which backbone stages train: heads, 5+, 4+, 3+ or all (TRAINABLE_PRESETS above);
    # None = as model.backbone.freeze_at says.
    trainable: str | None = None
    # Two phases in one run: only the heads (preset heads) for the first N steps, then
    # train.trainable; 0 = one phase.
    heads_first_steps: int = 0
    # Bit-identical training (kmask.training.Determinism): two runs of the configuration on
    # one machine end with the same weights, and so does a run killed at any moment and
    # resumed. On by default because every configuration promises exact resume
    # (docs/training.md): TensorFlow's op determinism for the run, oneDNN off (kmask train
    # sets TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow; the Trainer refuses to
    # start with oneDNN on) and, with GPUs visible, RoIAlign "auto" takes the pure
    # TensorFlow implementation (the custom op's CUDA gradient uses atomics). false trades
    # that for speed, e.g. on GPUs or an Intel CPU.
    deterministic: bool = True

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "reference_batch_size",
            "max_steps",
            "steps_per_epoch",
            "checkpoint_every_steps",
            "keep_checkpoints",
            "log_every",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}: expected a positive integer")
        if self.trainable is not None and self.trainable not in TRAINABLE_PRESETS:
            raise ConfigError(
                f"train.trainable: expected one of {', '.join(TRAINABLE_PRESETS)} or null, "
                f"got {self.trainable!r}"
            )
        if self.init_class_map is not None and not all(
            name and source for name, source in self.init_class_map.items()
        ):
            raise ConfigError("train.init_class_map: expected non-empty class names")
        if self.heads_first_steps and self.trainable is None:
            raise ConfigError(
                "train.heads_first_steps needs train.trainable (what trains after the heads)"
            )
        for name in (
            "warmup_steps",
            "eval_every_epochs",
            "num_visualizations",
            "heads_first_steps",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: expected an integer >= 0")
        if self.seed < 0:
            raise ConfigError(f"train.seed: expected an integer >= 0, got {self.seed}")
        if not isinstance(self.deterministic, bool):
            raise ConfigError(
                f"train.deterministic: expected true or false, got {self.deterministic!r}"
            )
        for name in ("base_learning_rate", "momentum", "weight_decay", "lr_decay_factor"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"train.{name}: expected a finite number")
        if self.base_learning_rate <= 0:
            raise ConfigError("train.base_learning_rate: expected a positive number")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"train.momentum: expected a value in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay: expected a number >= 0")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            raise ConfigError(
                f"train.lr_steps: expected increasing positive steps, got {self.lr_steps!r}"
            )
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError("train.grad_clip_norm: expected a positive number or null")
        if self.mixed_precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(
                "train.mixed_precision: expected float32, mixed_float16 or mixed_bfloat16, "
                f"got {self.mixed_precision!r}"
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation and prediction (``kmask.evaluation``, ``kmask evaluate`` / ``predict``)."""

    # Validation data: COCO JSON + image folder (COCOeval needs the JSON). Relative paths
    # are relative to the working directory; ``kmask`` flags override them.
    json_path: str | None = None
    images_dir: str | None = None
    batch_size: int = 1
    # Evaluate only the first N images of the JSON (None = all), e.g. for quick checks.
    max_images: int | None = None
    # Pasted mask probabilities >= this are foreground (the paper: 0.5).
    mask_threshold: float = 0.5
    # How box-frame masks are pasted into the image (kmask.ops.masks.paste_masks): "exact"
    # (detectron2's sub-pixel geometry) or "torchvision" (whole-pixel boxes, one padding
    # cell; what models converted from torchvision were evaluated with).
    mask_paste: str = "exact"
    # Detections below this score are not drawn by ``kmask predict`` (all are evaluated).
    visualization_score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError("eval.batch_size: expected a positive integer")
        if self.max_images is not None and self.max_images <= 0:
            raise ConfigError("eval.max_images: expected a positive integer or null")
        for name in ("mask_threshold", "visualization_score_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"eval.{name}: expected a value in [0, 1]")
        if self.mask_paste not in ("exact", "torchvision"):
            raise ConfigError(
                f"eval.mask_paste: expected exact or torchvision, got {self.mask_paste!r}"
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole experiment."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Converts a YAML value to the annotated field type, or raises ConfigError."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _coerce(key, key_type, f"{where} (key {key!r})"): _coerce(
                item, value_type, f"{where}.{key}"
            )
            for key, item in value.items()
        }
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(items))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3`` and ``2E5`` are numbers (YAML
    1.1, PyYAML's default, reads a float without a dot as a string), that refuses a key
    given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of ``node``; ``ConstructorError`` at the second occurrence of a key."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _read_yaml(path: Path) -> Any:
    """The YAML document of ``path``; ConfigError naming the file (and the line) when it is
    not UTF-8 or not valid YAML (tabs for indentation, unbalanced brackets, ...)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(override: str) -> dict[str, Any]:
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. train.max_steps=100")
    try:
        value: Any = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"override {override!r}: not a YAML value: {problem}") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The configuration as plain nested dicts (tuples become lists), ready for YAML."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Reads an experiment YAML file (or none) and applies ``key=value`` overrides.

    Args:
      path: YAML file whose mapping overrides the schema defaults; ``None`` for defaults.
      overrides: dotted ``section.field=value`` strings, values parsed as YAML
        (``train.lr_steps=[100,200]``), applied after the file.

    Raises:
      ConfigError: naming the file and the key for unknown keys or wrong types.
      FileNotFoundError: when ``path`` does not exist.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = _read_yaml(path) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        values = dict(loaded)
        source = str(path)
    for override in overrides:
        values = _merge(values, _parse_override(override))
    try:
        return _build(Config, values, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def config_from_dict(values: Mapping[str, Any], source: str = "values") -> Config:
    """A ``Config`` from nested section values (what a YAML file holds).

    Raises:
      ConfigError: naming ``source`` and the key for unknown keys or wrong types.
    """
    try:
        return _build(Config, values, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
