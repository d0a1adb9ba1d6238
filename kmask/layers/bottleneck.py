"""Keras layer: the ResNet / ResNeXt bottleneck block (He et al. 2016; Xie et al. 2017)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kmask.layers.normalization import build_norm


def conv_initializer() -> keras.initializers.Initializer:
    """He (MSRA) normal init with fan_out, as the reference implementations' ResNet convs."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def norm_layer(norm: str, prefix: str, epsilon: float, dtype: Any) -> keras.layers.Layer | None:
    """The normalization after conv ``prefix``: ``{prefix}_bn``, ``{prefix}_gn`` or None."""
    suffix = "gn" if norm == "gn" else "bn"
    return build_norm(norm, f"{prefix}_{suffix}", dtype=dtype, epsilon=epsilon)


def normalize(norm: keras.layers.Layer | None, x: Any) -> Any:
    """``norm(x)``, or ``x`` without a normalization."""
    return x if norm is None else norm(x)


@keras.saving.register_keras_serializable(package="kmask")
class Bottleneck(keras.layers.Layer):
    """Bottleneck block ``1x1 -> 3x3 (groups) -> 1x1`` plus identity or projection shortcut.

    ``width`` is the channel count of the two inner convolutions, ``out_channels`` that of
    the block. The spatial ``stride`` sits on the first 1x1 convolution when
    ``stride_in_1x1`` (MSRA / keras.applications / detectron2), else on the 3x3 (torchvision
    "v1.5"); a strided 3x3 pads 1 pixel on every side, as PyTorch's ``padding=1`` does.
    Sublayer names are keras.applications' (``{name}_{0..3}_conv`` and ``{name}_{0..3}_bn``
    or ``_gn``); ``_0_`` is the projection shortcut of a stage's first block.
    Input ``[B, H, W, C_in]``; output ``[B, ceil(H / stride), ceil(W / stride), out_channels]``.
    """

    def __init__(
        self,
        width: int,
        out_channels: int,
        stride: int,
        projection: bool,
        stride_in_1x1: bool,
        groups: int,
        norm: str,
        norm_epsilon: float,
        conv_bias: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.out_channels = out_channels
        self.stride = stride
        dtype = self.dtype_policy
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)

        def conv(out: int, size: int, index: int, stride: int = 1, groups: int = 1):
            return keras.layers.Conv2D(
                out,
                size,
                strides=stride,
                padding="same" if size > 1 and stride == 1 else "valid",
                groups=groups,
                use_bias=conv_bias,
                kernel_initializer=conv_initializer(),
                name=f"{self.name}_{index}_conv",
                dtype=dtype,
            )

        def block_norm(index: int) -> keras.layers.Layer | None:
            return norm_layer(norm, f"{self.name}_{index}", norm_epsilon, dtype)

        self.shortcut_conv = conv(out_channels, 1, 0, stride) if projection else None
        self.shortcut_norm = block_norm(0) if projection else None
        self.conv1 = conv(width, 1, 1, stride_1x1)
        self.norm1 = block_norm(1)
        # TF's "same" padding of a strided 3x3 pads bottom/right only; pad 1 on every side.
        self.pad_3x3 = stride_3x3 > 1
        self.conv2 = conv(width, 3, 2, stride_3x3, groups)
        self.norm2 = block_norm(2)
        self.conv3 = conv(out_channels, 1, 3)
        self.norm3 = block_norm(3)

    def named_layers(self) -> list[keras.layers.Layer]:
        """The block's convolutions and normalizations (the layers that hold weights)."""
        layers = [self.conv1, self.norm1, self.conv2, self.norm2, self.conv3, self.norm3]
        if self.shortcut_conv is not None:
            layers = [self.shortcut_conv, self.shortcut_norm, *layers]
        return [layer for layer in layers if layer is not None]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[-1]
        pairs = [
            (self.conv1, self.norm1, channels),
            (self.conv2, self.norm2, self.width),
            (self.conv3, self.norm3, self.width),
        ]
        if self.shortcut_conv is not None:
            pairs.append((self.shortcut_conv, self.shortcut_norm, channels))
        for conv, norm, in_channels in pairs:
            conv.build((None, None, None, in_channels))
            if norm is not None:
                norm.build((None, None, None, conv.filters))

    def call(self, inputs: Any) -> Any:
        shortcut = inputs
        if self.shortcut_conv is not None:
            shortcut = normalize(self.shortcut_norm, self.shortcut_conv(inputs))
        x = ops.relu(normalize(self.norm1, self.conv1(inputs)))
        if self.pad_3x3:
            x = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = ops.relu(normalize(self.norm2, self.conv2(x)))
        x = normalize(self.norm3, self.conv3(x))
        return ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        def down(size: int | None) -> int | None:
            return None if size is None else -(-size // self.stride)

        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), self.out_channels)


def resnet_stage(
    level: int,
    num_blocks: int,
    stride: int,
    groups: int,
    width_per_group: int,
    stride_in_1x1: bool,
    norm: str,
    norm_epsilon: float,
    conv_bias: bool,
    dtype: Any,
) -> list[Bottleneck]:
    """The blocks of ResNet stage ``conv{level}`` (C``level``), named ``conv{level}_block1``
    ..: inner width ``groups * width_per_group * 2**(level - 2)``, ``256 * 2**(level - 2)``
    output channels, the first block with a projection shortcut and ``stride``.
    ``ResNet`` builds its stages with it, ``Res5Head`` its per-RoI conv5."""
    scale = 2 ** (level - 2)
    return [
        Bottleneck(
            width=groups * width_per_group * scale,
            out_channels=256 * scale,
            stride=stride if index == 0 else 1,
            projection=index == 0,
            stride_in_1x1=stride_in_1x1,
            groups=groups,
            norm=norm,
            norm_epsilon=norm_epsilon,
            conv_bias=conv_bias,
            name=f"conv{level}_block{index + 1}",
            dtype=dtype,
        )
        for index in range(num_blocks)
    ]
