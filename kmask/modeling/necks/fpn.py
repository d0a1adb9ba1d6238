"""Feature Pyramid Network (Lin et al., 2017) turning C2..C5 into P2..P6."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from kmask.layers.normalization import build_norm, check_norm

# Highest backbone level: C5 (stride 32) starts the top-down pathway.
_TOP_BACKBONE_LEVEL = 5


def _c2_xavier_fill() -> keras.initializers.Initializer:
    """Caffe2 "XavierFill" = PyTorch ``kaiming_uniform_(a=1)``: U(+-sqrt(3 / fan_in)).

    This is what the public reference implementations (Detectron/detectron2
    ``c2_xavier_fill``, torchvision ``FeaturePyramidNetwork``) use for the FPN convolutions.
    """
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="uniform")


@keras.saving.register_keras_serializable(package="kmask")
class FPN(keras.layers.Layer):
    """Feature pyramid: lateral 1x1 convs, nearest 2x top-down upsampling, add, 3x3 convs.

    For backbone levels l = ``min_level``..5: ``lateral_l = conv1x1(C_l)``;
    ``M_5 = lateral_5`` and ``M_l = lateral_l + up2(M_{l+1})``; ``P_l = conv3x3(M_l)``, all
    with ``num_channels`` outputs, no activation (FPN paper, Sec. 3). Levels above 5 (P6 by
    default) are stride-2 subsamplings of the level below, ``P_{l+1} = P_l[:, ::2, ::2]``
    (Detectron's max-pool with kernel 1 and stride 2; used by the RPN only).

    Sizes need not be multiples of 2: ``up2`` repeats every pixel 2x2 and crops the result
    to the lateral's size, which handles any ``C_l`` of size ``ceil(C_{l-1} / 2)`` (what
    ``ResNet`` produces for any input) and equals nearest-neighbour resizing to the lateral's
    size (torchvision's choice). Inputs padded to a multiple of 32 need no crop.

    Convolution kernels use the reference implementations' initialization (Caffe2
    "XavierFill" = ``kaiming_uniform_(a=1)``, i.e. U(+-sqrt(3 / fan_in))) and zero biases.
    They run in the layer's compute dtype (mixed precision works). Sublayer names follow
    detectron2: ``fpn_lateral{l}`` and ``fpn_output{l}``.

    Args:
      num_channels: feature dimension d of every output level (256 in the papers).
      min_level: finest output level, 2..5; the input must hold ``C{min_level}`` .. ``C5``.
      max_level: coarsest output level, >= 5; levels 6.. come from subsampling.
      norm: normalization after every lateral and output conv (``"none"``: the papers',
        convs with biases; ``"bn"``: torchvision's v2 model; ``"gn"``: detectron2's GN
        configs); with a norm the convs have no bias. Norms are named ``{conv}_norm``.
      **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call: ``features {"C2": [B, H2, W2, c2], ..., "C5": [B, H5, W5, c5]}`` (extra keys are
    ignored) -> ``{"P2": [B, H2, W2, d], ..., "P5": [B, H5, W5, d],
    "P6": [B, ceil(H5 / 2), ceil(W5 / 2), d]}`` in the compute dtype.

    Reuse: any ``{"C2".."C5"}`` dict (another backbone's maps) gives a pyramid for your own
    heads; name the layer ``"fpn"`` to load a trained kmask FPN by name
    (``kmask.training.WeightTransfer``). Example::

        >>> import keras
        >>> from kmask.modeling import FPN
        >>> features = {f"C{k}": keras.random.normal((1, 64 >> k, 64 >> k, 8)) for k in range(2, 6)}
        >>> pyramid = FPN(num_channels=32, name="fpn")(features)
        >>> for key, value in pyramid.items():
        ...     print(key, tuple(value.shape))
        P2 (1, 16, 16, 32)
        P3 (1, 8, 8, 32)
        P4 (1, 4, 4, 32)
        P5 (1, 2, 2, 32)
        P6 (1, 1, 1, 32)
    """

    def __init__(
        self,
        num_channels: int = 256,
        min_level: int = 2,
        max_level: int = 6,
        norm: str = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_norm(norm, "FPN")
        if num_channels < 1:
            raise ValueError(f"FPN num_channels must be >= 1, got {num_channels}")
        if not 2 <= min_level <= _TOP_BACKBONE_LEVEL <= max_level:
            raise ValueError(
                f"FPN needs 2 <= min_level <= {_TOP_BACKBONE_LEVEL} <= max_level, got "
                f"min_level={min_level}, max_level={max_level}"
            )
        self.num_channels = num_channels
        self.min_level = min_level
        self.max_level = max_level
        self.backbone_levels = tuple(range(min_level, _TOP_BACKBONE_LEVEL + 1))

        def conv(size: int, name: str) -> keras.layers.Conv2D:
            return keras.layers.Conv2D(
                num_channels,
                size,
                padding="same",
                use_bias=norm == "none",
                kernel_initializer=_c2_xavier_fill(),
                bias_initializer="zeros",
                name=name,
                dtype=self.dtype_policy,
            )

        self.lateral_convs = [conv(1, f"fpn_lateral{level}") for level in self.backbone_levels]
        self.output_convs = [conv(3, f"fpn_output{level}") for level in self.backbone_levels]
        self.lateral_norms = [
            build_norm(norm, f"{conv.name}_norm", self.dtype_policy) for conv in self.lateral_convs
        ]
        self.output_norms = [
            build_norm(norm, f"{conv.name}_norm", self.dtype_policy) for conv in self.output_convs
        ]

    def build(self, features_shape: dict[str, tuple[int | None, ...]]) -> None:
        """Creates the conv weights from the channel counts of ``C{min_level}`` .. ``C5``."""
        for level, lateral, output in zip(
            self.backbone_levels, self.lateral_convs, self.output_convs
        ):
            key = f"C{level}"
            if key not in features_shape:
                needed = [f"C{level}" for level in self.backbone_levels]
                raise ValueError(
                    f"FPN(min_level={self.min_level}) needs backbone features {needed}, "
                    f"got keys {sorted(features_shape)}"
                )
            lateral.build((None, None, None, features_shape[key][-1]))
            output.build((None, None, None, self.num_channels))
        for norm in (*self.lateral_norms, *self.output_norms):
            if norm is not None:
                norm.build((None, None, None, self.num_channels))

    @staticmethod
    def _conv_norm(conv: Any, norm: Any, x: Any, training: bool | None) -> Any:
        x = conv(x)
        return x if norm is None else norm(x, training=training)

    def call(self, features: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        """Builds the pyramid.

        Args:
          features: ``{"C{l}": [B, H_l, W_l, c_l]}`` for l = min_level..5, with
            ``H_l = ceil(H_{l-1} / 2)`` (same for W).

        Returns:
          ``{"P{l}": [B, H_l, W_l, num_channels]}`` for l = min_level..max_level, where
          levels above 5 halve the size of the level below (rounding up).
        """
        pyramid = {}
        merged = None
        for i in reversed(range(len(self.backbone_levels))):
            level = self.backbone_levels[i]
            x = self._conv_norm(
                self.lateral_convs[i], self.lateral_norms[i], features[f"C{level}"], training
            )
            if merged is not None:
                height, width = ops.shape(x)[1], ops.shape(x)[2]
                upsampled = ops.repeat(ops.repeat(merged, 2, axis=1), 2, axis=2)
                x = x + upsampled[:, :height, :width, :]
            merged = x
            pyramid[f"P{level}"] = self._conv_norm(
                self.output_convs[i], self.output_norms[i], x, training
            )
        for level in range(_TOP_BACKBONE_LEVEL + 1, self.max_level + 1):
            pyramid[f"P{level}"] = pyramid[f"P{level - 1}"][:, ::2, ::2, :]
        return {
            f"P{level}": pyramid[f"P{level}"] for level in range(self.min_level, self.max_level + 1)
        }

    def compute_output_shape(
        self, features_shape: dict[str, tuple[int | None, ...]]
    ) -> dict[str, tuple[int | None, ...]]:
        """``{"P{l}": (B, H_l, W_l, num_channels)}``; levels above 5 halve (ceil) H and W."""
        shapes = {}
        for level in range(self.min_level, self.max_level + 1):
            if level <= _TOP_BACKBONE_LEVEL:
                batch, height, width = features_shape[f"C{level}"][:3]
            else:
                batch, height, width = shapes[f"P{level - 1}"][:3]
                height = None if height is None else -(-height // 2)
                width = None if width is None else -(-width // 2)
            shapes[f"P{level}"] = (batch, height, width, self.num_channels)
        return shapes
