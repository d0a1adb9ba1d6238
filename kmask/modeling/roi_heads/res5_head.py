"""The shared RoI trunk of the ResNet-C4 detectors: RoIAlign on C4, then ResNet's conv5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from kmask.layers.bottleneck import resnet_stage
from kmask.layers.multi_level_roi_align import MultiLevelROIAlign
from kmask.modeling.backbones.resnet import load_resnet_weights

# Blocks of ResNet's conv5 stage (3 for ResNet-50/101/152) and its level.
_NUM_BLOCKS = 3
_LEVEL = 5


@keras.saving.register_keras_serializable(package="kmask")
class Res5Head(keras.layers.Layer):
    """ResNet-C4 RoI trunk (Mask R-CNN figure 3, left): ``pooler`` then ``blocks``.

    ``pooler`` (``MultiLevelROIAlign`` on the single level C4, stride 16) pools each RoI to
    ``pooler_resolution``; ``blocks`` are ResNet's conv5 stage (three bottlenecks, the first
    with a projection shortcut and stride ``stride``) run on every RoI, giving 2048-channel
    maps of side ``ceil(pooler_resolution / stride)``. ``ROIHeads`` runs it once per set of
    boxes and hands its output to the box head (average pooling, ``BoxHead(pool="average")``)
    and the mask head (deconv on the 7x7 maps), which share it.

    Two settings give the same 7x7x2048 output:

    - the paper's: RoIAlign 7x7 and ``stride=1`` ("res5 ... first conv operates on a 7x7 RoI
      with stride 1");
    - detectron2's ``Res5ROIHeads``: RoIAlign 14x14 (ROIAlignV2, adaptive sampling) and
      ``stride=2``, what its ``*_R_50_C4_*`` model-zoo weights were trained with.

    The layout arguments are the backbone's (``ResNet``) and must match it; sublayers are
    named as the backbone's conv5 stage (``conv5_block1`` ..), so conv5 weights of an
    ImageNet ResNet load by name (``load_backbone_weights``).

    Args:
      pooler_resolution: RoIAlign output side S (7 paper, 14 detectron2).
      pooler_sampling_ratio: samples per bin and axis (0 = adaptive).
      pooler_aligned: half-pixel-corrected RoIAlign.
      stride: stride of conv5's first block (1 paper, 2 detectron2).
      norm, norm_epsilon, stride_in_1x1, conv_bias, groups, width_per_group: the backbone's
        layout (``kmask.config.BackboneConfig``).
      roi_align_implementation: "auto" | "custom" | "tf" (``kmask.ops.roi_align``).
      **kwargs: base ``keras.layers.Layer`` arguments.

    Call: ``(features {"C4": [B, H/16, W/16, 1024]}, boxes [B, R, 4] float32 (y1, x1, y2, x2)
    pixels)`` -> ``[B, R, S', S', 2048]`` in the compute dtype, ``S' = ceil(S / stride)``.

    Reuse: per-box conv5 features on any stride-16 map. Example::

        >>> import keras, numpy as np
        >>> from kmask.modeling import Res5Head
        >>> features = {"C4": keras.random.normal((1, 4, 4, 64))}
        >>> boxes = np.array([[[0, 0, 32, 32], [8, 8, 60, 40]]], "float32")
        >>> head = Res5Head(7, norm="none", width_per_group=8, roi_align_implementation="tf")
        >>> tuple(head(features, boxes).shape)
        (1, 2, 7, 7, 2048)
    """

    def __init__(
        self,
        pooler_resolution: int = 7,
        pooler_sampling_ratio: int = 2,
        pooler_aligned: bool = True,
        stride: int = 1,
        norm: str = "frozen_bn",
        norm_epsilon: float = 1e-5,
        stride_in_1x1: bool = True,
        conv_bias: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
        roi_align_implementation: str = "auto",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)  # boxes stay float32; the blocks cast themselves
        super().__init__(**kwargs)
        if stride not in (1, 2):
            raise ValueError(f"Res5Head stride must be 1 or 2, got {stride}")
        self.supports_jit = False  # the RoIAlign custom op cannot be XLA-compiled
        self.pooler_resolution = pooler_resolution
        self.stride = stride
        self.pooler = MultiLevelROIAlign(
            pooler_resolution,
            pooler_sampling_ratio,
            pooler_aligned,
            roi_align_implementation,
            _LEVEL - 1,
            _LEVEL - 1,
            name="pooler",
        )
        self.blocks = resnet_stage(
            _LEVEL,
            _NUM_BLOCKS,
            stride,
            groups,
            width_per_group,
            stride_in_1x1,
            norm,
            norm_epsilon,
            conv_bias,
            self.dtype_policy.name,
        )

    @property
    def output_side(self) -> int:
        """Side S' of the output maps: ``ceil(pooler_resolution / stride)``."""
        return -(-self.pooler_resolution // self.stride)

    def build(
        self,
        features_shape: dict[str, tuple[int | None, ...]],
        boxes_shape: tuple[int | None, ...] | None = None,
    ) -> None:
        channels = self.pooler.compute_output_shape(features_shape, (None, None, 4))[-1]
        for block in self.blocks:
            block.build((None, None, None, channels))
            channels = block.out_channels

    def freeze(self, stages: int) -> None:
        """``ResNet.freeze`` for the conv5 stage run here: not trainable when the first
        ``stages`` backbone stages are frozen and conv5 is among them (``stages == 5``,
        ``model.backbone.freeze_at: 5``, the ``heads`` preset), trainable otherwise."""
        self.trainable = stages < _LEVEL

    def load_backbone_weights(self, path: str, depth: int) -> None:
        """Copies conv5 of an ImageNet ResNet-``depth`` weights file (what ``ResNet(weights=)``
        reads: a ``backbone.npz`` of ``kmask convert-weights`` or a keras.applications file)
        into ``blocks``; builds the layer first if needed (C4 has 1024 channels).

        Raises:
          ValueError: naming the file and the layer when the file does not fit.
        """
        if not self.built:
            self.build({"C4": (None, None, None, 1024)})
        load_resnet_weights(self.weighted_layers(), Path(path), depth)

    def weighted_layers(self) -> dict[str, keras.layers.Layer]:
        """The convolutions and normalizations of ``blocks``, keyed by their
        keras.applications names (``conv5_block1_1_conv``, ...)."""
        return {layer.name: layer for block in self.blocks for layer in block.named_layers()}

    def call(self, features: dict[str, tf.Tensor], boxes: tf.Tensor) -> tf.Tensor:
        pooled = self.pooler(features, boxes)  # [B, R, S, S, C]
        batch, num = tf.shape(pooled)[0], tf.shape(pooled)[1]
        x = tf.reshape(pooled, [batch * num, *pooled.shape[2:]])
        for block in self.blocks:
            x = block(x)
        return tf.reshape(x, [batch, num, *x.shape[1:]])

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]], boxes_shape: tuple[int | None, ...]
    ) -> tuple[int | None, ...]:
        side = self.output_side
        return (*boxes_shape[:2], side, side, self.blocks[-1].out_channels)
