"""ResNet-50/101 backbone returning C2..C5, with keras.applications weight loading."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from kmask.layers.frozen_batch_norm import FrozenBatchNorm

# Bottleneck blocks per stage conv2..conv5 (He et al., "Deep Residual Learning", Table 1).
_BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_STAGE_FILTERS = (64, 128, 256, 512)
_NORMS = ("frozen_bn", "group_norm")
# keras.applications.resnet.preprocess_input ("caffe" mode): BGR channel means, no scaling.
_BGR_MEAN = (103.939, 116.779, 123.68)
# BatchNormalization epsilon of the keras.applications ResNets.
_BN_EPSILON = 1.001e-5
_GN_GROUPS = 32
_GN_EPSILON = 1e-5
_APPLICATIONS = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}


def _conv_initializer() -> keras.initializers.Initializer:
    """He (MSRA) normal init with fan_out, as the reference implementations' ResNet convs."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def _make_norm(norm: str, prefix: str, dtype: Any) -> keras.layers.Layer:
    """The normalization after conv ``prefix``: ``{prefix}_bn`` or ``{prefix}_gn``."""
    if norm == "frozen_bn":
        return FrozenBatchNorm(epsilon=_BN_EPSILON, name=f"{prefix}_bn", dtype=dtype)
    return keras.layers.GroupNormalization(
        groups=_GN_GROUPS, epsilon=_GN_EPSILON, name=f"{prefix}_gn", dtype=dtype
    )


class _Bottleneck(keras.layers.Layer):
    """ResNet v1 bottleneck block ``1x1 (stride) -> 3x3 -> 1x1 (4 * filters)`` + shortcut.

    Sublayer names equal those of keras.applications (``{name}_{0..3}_conv`` and
    ``{name}_{0..3}_bn``); ``_0_`` is the projection shortcut of a stage's first block.
    Input ``[B, H, W, C_in]``; output ``[B, ceil(H / stride), ceil(W / stride), 4 * filters]``.
    """

    def __init__(
        self, filters: int, stride: int, projection: bool, norm: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.stride = stride
        dtype = self.dtype_policy

        def conv(out: int, size: int, index: int, stride: int = 1) -> keras.layers.Conv2D:
            return keras.layers.Conv2D(
                out,
                size,
                strides=stride,
                padding="same" if size > 1 else "valid",
                kernel_initializer=_conv_initializer(),
                name=f"{self.name}_{index}_conv",
                dtype=dtype,
            )

        self.shortcut_conv = conv(4 * filters, 1, 0, stride) if projection else None
        self.shortcut_norm = _make_norm(norm, f"{self.name}_0", dtype) if projection else None
        self.conv1 = conv(filters, 1, 1, stride)
        self.norm1 = _make_norm(norm, f"{self.name}_1", dtype)
        self.conv2 = conv(filters, 3, 2)
        self.norm2 = _make_norm(norm, f"{self.name}_2", dtype)
        self.conv3 = conv(4 * filters, 1, 3)
        self.norm3 = _make_norm(norm, f"{self.name}_3", dtype)

    def named_layers(self) -> list[keras.layers.Layer]:
        """The block's convolutions and normalizations (the layers that hold weights)."""
        layers = [self.conv1, self.norm1, self.conv2, self.norm2, self.conv3, self.norm3]
        if self.shortcut_conv is not None:
            layers = [self.shortcut_conv, self.shortcut_norm, *layers]
        return layers

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[-1]
        for conv, norm, in_channels in (
            (self.conv1, self.norm1, channels),
            (self.conv2, self.norm2, self.filters),
            (self.conv3, self.norm3, self.filters),
        ):
            conv.build((None, None, None, in_channels))
            norm.build((None, None, None, conv.filters))
        if self.shortcut_conv is not None:
            self.shortcut_conv.build((None, None, None, channels))
            self.shortcut_norm.build((None, None, None, 4 * self.filters))

    def call(self, inputs: Any) -> Any:
        shortcut = inputs
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_norm(self.shortcut_conv(inputs))
        x = ops.relu(self.norm1(self.conv1(inputs)))
        x = ops.relu(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        return ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        def down(size: int | None) -> int | None:
            return None if size is None else -(-size // self.stride)

        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), 4 * self.filters)


@keras.saving.register_keras_serializable(package="kmask")
class ResNet(keras.layers.Layer):
    """ResNet-50/101 (v1) backbone: images in, C2..C5 feature maps out.

    Layout: exactly the keras.applications ``ResNet50`` / ``ResNet101`` (v1) graph, which is
    the original MSRA "ResNet v1 / Caffe-style" layout that the original Mask R-CNN release
    (Detectron, ``STRIDE_1X1``) also used: stem ``7x7/2 conv -> norm -> ReLU -> 3x3/2 max
    pool`` (both with explicit zero padding, 3 and 1), then stages conv2..conv5 of
    bottleneck blocks [3, 4, 6, 3] (depth 50) or [3, 4, 23, 3] (depth 101). The spatial
    stride 2 of stages conv3..conv5 sits on the **first 1x1 convolution** of the stage's
    first block (and on its 1x1 projection shortcut), not on the 3x3 convolution (the
    "v1.5" / torchvision layout). Convolutions have biases, as in keras.applications.
    Sublayer names equal keras.applications' (``conv1_conv``, ``conv2_block1_1_conv``, ...,
    with ``_bn`` / ``_gn`` normalizations), so weights map one to one.

    Preprocessing is part of the layer: it takes RGB pixels 0..255 and applies the
    keras.applications ResNet ("caffe" mode) normalization itself: RGB -> BGR, subtract the
    ImageNet means (103.939, 116.779, 123.68), no scaling. The arithmetic is in float32; the
    network then runs in the layer's compute dtype (mixed precision works).

    Output sizes are ``ceil(H / s) x ceil(W / s)`` for strides s = 4, 8, 16, 32 (exactly
    ``H / s`` for inputs padded to a multiple of 32).

    Args:
      depth: 50 or 101.
      freeze_at: number of leading stages set ``trainable = False``: 0 nothing, 1 the stem
        (conv1), 2 stem + conv2 (papers' default), ... 5 everything. Setting the whole layer's
        ``trainable`` attribute afterwards overrides this, as for any Keras layer.
      norm: ``"frozen_bn"`` (``FrozenBatchNorm``, fixed pretrained statistics; the papers'
        choice) or ``"group_norm"`` (``keras.layers.GroupNormalization``, 32 groups,
        trainable unless frozen by ``freeze_at``).
      weights: path to a keras.applications ResNet50/ResNet101 weights file matching
        ``depth``: the legacy ``.h5`` files that ``keras.applications.ResNet50(weights=path)``
        accepts (with or without the classification top, e.g.
        ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``) or a Keras 3
        ``.weights.h5`` saved by ``model.save_weights`` of such a model. ``None`` = random
        initialization. Read once, at construction; only valid with ``norm="frozen_bn"``.
      **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Raises:
      ValueError: for an unsupported depth, norm or freeze_at, for weights with group_norm,
        or when the weights file does not fit (the message names the file).
      FileNotFoundError: when the weights file does not exist.

    Call: ``images [B, H, W, 3]`` float RGB 0..255 -> ``{"C2": [B, H/4, W/4, 256],
    "C3": [B, H/8, W/8, 512], "C4": [B, H/16, W/16, 1024], "C5": [B, H/32, W/32, 2048]}``.
    """

    def __init__(
        self,
        depth: int = 50,
        freeze_at: int = 2,
        norm: str = "frozen_bn",
        weights: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if depth not in _BLOCKS_PER_STAGE:
            raise ValueError(
                f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
            )
        if norm not in _NORMS:
            raise ValueError(f"ResNet norm must be one of {_NORMS}, got {norm!r}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"ResNet freeze_at must be in 0..5, got {freeze_at}")
        if weights is not None and norm != "frozen_bn":
            raise ValueError(
                f"ResNet weights={weights!r}: keras.applications weights carry BatchNorm "
                f"statistics and only fit norm='frozen_bn', not norm={norm!r}"
            )
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"ResNet-{depth} weights file not found: {weights}")
        self.depth = depth
        self.freeze_at = freeze_at
        self.norm = norm
        self.weights_path = None if weights is None else str(weights)

        dtype = self.dtype_policy
        self.stem_conv = keras.layers.Conv2D(
            64, 7, strides=2, kernel_initializer=_conv_initializer(), name="conv1_conv", dtype=dtype
        )
        self.stem_norm = _make_norm(norm, "conv1", dtype)
        self.blocks = []
        for stage, (filters, count) in enumerate(
            zip(_STAGE_FILTERS, _BLOCKS_PER_STAGE[depth]), start=2
        ):
            for index in range(count):
                self.blocks.append(
                    _Bottleneck(
                        filters,
                        stride=2 if stage > 2 and index == 0 else 1,
                        projection=index == 0,
                        norm=norm,
                        name=f"conv{stage}_block{index + 1}",
                        dtype=dtype,
                    )
                )
        for layer in self._stage_layers(range(1, freeze_at + 1)):
            layer.trainable = False
        if self.weights_path is not None:
            self.build((None, None, None, 3))
            self._load_applications_weights(Path(self.weights_path))

    def _stage_layers(self, stages: range) -> list[keras.layers.Layer]:
        """The sublayers of stages ``stages`` (1 = stem, 2..5 = conv2..conv5)."""
        layers = [self.stem_conv, self.stem_norm] if 1 in stages else []
        start = 0
        for stage, count in enumerate(_BLOCKS_PER_STAGE[self.depth], start=2):
            if stage in stages:
                layers.extend(self.blocks[start : start + count])
            start += count
        return layers

    def _weighted_layers(self) -> dict[str, keras.layers.Layer]:
        """Every convolution and normalization, keyed by its keras.applications name."""
        layers = [self.stem_conv, self.stem_norm]
        for block in self.blocks:
            layers.extend(block.named_layers())
        return {layer.name: layer for layer in layers}

    def _load_applications_weights(self, path: Path) -> None:
        """Copies the weights of a keras.applications ResNet file into the sublayers."""
        source = _read_applications_weights(path, self.depth)
        for name, layer in self._weighted_layers().items():
            if name not in source:
                raise ValueError(
                    f"ResNet-{self.depth} weights file {path} has no weights for layer {name!r}"
                )
            layer.set_weights(source[name])

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Creates all weights for ``input_shape = [B, H, W, 3]``."""
        if input_shape[-1] != 3:
            raise ValueError(f"ResNet expects RGB images [B, H, W, 3], got shape {input_shape}")
        self.stem_conv.build((None, None, None, 3))
        self.stem_norm.build((None, None, None, 64))
        channels = 64
        for block in self.blocks:
            block.build((None, None, None, channels))
            channels = 4 * block.filters

    def call(self, images: Any) -> dict[str, Any]:
        """Runs the backbone.

        Args:
          images: ``[B, H, W, 3]`` RGB pixel values 0..255 (any float dtype).

        Returns:
          ``{"C2".."C5"}``: ``[B, ceil(H/s), ceil(W/s), C]`` for s = 4, 8, 16, 32 and
          C = 256, 512, 1024, 2048, in the layer's compute dtype.
        """
        x = ops.flip(ops.cast(images, "float32"), axis=-1)
        x = x - ops.convert_to_tensor(_BGR_MEAN, dtype="float32")
        x = ops.cast(x, self.compute_dtype)
        x = ops.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
        x = ops.relu(self.stem_norm(self.stem_conv(x)))
        x = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = ops.max_pool(x, pool_size=3, strides=2, padding="valid")
        features = {}
        start = 0
        for stage, count in enumerate(_BLOCKS_PER_STAGE[self.depth], start=2):
            for block in self.blocks[start : start + count]:
                x = block(x)
            start += count
            features[f"C{stage}"] = x
        return features

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...]
    ) -> dict[str, tuple[int | None, ...]]:
        """``{"Ck": (B, ceil(H / 2**k), ceil(W / 2**k), 64 * 2**k)}`` for k = 2..5."""
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]

        def down(size: int | None, stride: int) -> int | None:
            return None if size is None else math.ceil(size / stride)

        return {
            f"C{level}": (batch, down(height, 2**level), down(width, 2**level), 64 * 2**level)
            for level in range(2, 6)
        }

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments plus the base layer's."""
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "freeze_at": self.freeze_at,
                "norm": self.norm,
                "weights": self.weights_path,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ResNet:
        """Rebuilds the architecture from ``get_config()`` without reading the weights file.

        A deserialized layer gets its variables from the saved model (or ``set_weights``),
        so a saved model does not depend on the original weights file still existing. The
        returned layer's ``get_config()`` equals ``config``.
        """
        layer = cls(**{**config, "weights": None})
        layer.weights_path = config.get("weights")
        return layer


def _read_applications_weights(path: Path, depth: int) -> dict[str, list[np.ndarray]]:
    """Loads ``path`` into a keras.applications ResNet of ``depth``; weights by layer name.

    Keras' own loaders read the file (legacy ``.h5`` by layer order, ``.weights.h5`` by
    object order). The model is built without and then with the classification top, so
    both kinds of file fit.
    """
    errors = []
    for include_top in (False, True):
        model = _APPLICATIONS[depth](
            weights=None,
            include_top=include_top,
            input_shape=None if include_top else (None, None, 3),
        )
        # Keras warns about every unmatched object of a failed attempt: keep the warnings of
        # the attempt that succeeds only; a failure is reported in the error below.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model.load_weights(str(path))
            except Exception as error:  # ValueError, OSError or KeyError, by file format.
                errors.append(f"include_top={include_top}: {type(error).__name__}: {error}")
                continue
        for warning in caught:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    raise ValueError(
        f"ResNet-{depth} weights file {path} does not fit keras.applications "
        f"ResNet{depth} (tried without and with the classification top):\n" + "\n".join(errors)
    )
