"""ResNet / ResNeXt backbones returning C2..C5, with keras.applications weight loading."""

from __future__ import annotations

import contextvars
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from kmask.layers.bottleneck import conv_initializer, norm_layer, normalize, resnet_stage
from kmask.layers.normalization import check_norm
from kmask.modeling.backbones.backbone import Backbone, FeatureSpec, register_backbone

# Bottleneck blocks per stage conv2..conv5 (He et al., "Deep Residual Learning", Table 1).
_BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_LEVELS = (2, 3, 4, 5)
_APPLICATIONS = {
    50: keras.applications.ResNet50,
    101: keras.applications.ResNet101,
    152: keras.applications.ResNet152,
}
# The constructor arguments that keras.applications ResNet weight files require.
_APPLICATIONS_LAYOUT = {
    "norm": "frozen_bn",
    "conv_bias": True,
    "stride_in_1x1": True,
    "groups": 1,
    "width_per_group": 64,
}
# Set by ResNet.from_config: rebuild the architecture without reading the weights file.
_SKIP_WEIGHTS_FILE = contextvars.ContextVar("kmask_resnet_skip_weights_file", default=False)


@register_backbone("resnet")
@keras.saving.register_keras_serializable(package="kmask")
class ResNet(Backbone):
    """ResNet-50/101/152 and ResNeXt (v1 bottleneck) backbone: images in, C2..C5 out.

    Call: ``images [B, H, W, 3]`` float, **already normalized** -> ``{"C2": [B, H/4, W/4,
    256], "C3": [B, H/8, W/8, 512], "C4": [B, H/16, W/16, 1024], "C5": [B, H/32, W/32,
    2048]}`` (sizes ``ceil(H / s) x ceil(W / s)``, exactly ``H / s`` for inputs padded to a
    multiple of 32), in the layer's compute dtype. The backbone does not normalize: the
    model's input normalization layer runs before it, with the statistics the weights were
    trained with (keras.applications weights: RGB -> BGR, minus (103.939, 116.779, 123.68),
    no scaling; torchvision: RGB / 255 minus (0.485, 0.456, 0.406) over (0.229, 0.224,
    0.225); detectron2 MSRA: BGR minus (103.53, 116.28, 123.675)). The layer only casts the
    images to its compute dtype, so mixed precision works (``dtype="mixed_float16"``).

    Architecture: stem ``7x7/2 conv -> norm -> ReLU -> 3x3/2 max pool`` (zero padding 3 and
    1), then stages conv2..conv5 (C2..C5) of bottleneck blocks ``1x1 -> 3x3 -> 1x1`` with
    (3, 4, 6, 3), (3, 4, 23, 3) or (3, 8, 36, 3) blocks for depth 50, 101, 152. The inner
    width of stage conv2 is ``groups * width_per_group`` and doubles per stage; the block
    outputs are 256, 512, 1024, 2048 channels. A stage's first block has a 1x1 projection
    shortcut; stages conv3..conv5 downsample by 2 in their first block.

    Layout variants, so that the common checkpoints map one to one:

    - keras.applications ResNet50/101/152: ``stride_in_1x1=True, conv_bias=True``
      (the defaults), ``norm_epsilon=1.001e-5`` (what those files were trained with).
    - detectron2 MSRA R-50 / R-101: ``stride_in_1x1=True, conv_bias=False``,
      ``norm_epsilon=1e-5``.
    - torchvision ResNet ("v1.5"): ``stride_in_1x1=False, conv_bias=False``;
      ``norm_epsilon=0.0`` for the COCO detection weights (1e-5 for ImageNet ones).
    - ResNeXt-101 32x8d (detectron2's X101 model-zoo backbone, torchvision's
      ``resnext101_32x8d``): ``depth=101, groups=32, width_per_group=8,
      stride_in_1x1=False, conv_bias=False``.

    Sublayer names are keras.applications' (``conv1_conv``, ``conv1_bn``,
    ``conv2_block1_0_conv`` (projection), ``conv2_block1_1_conv`` .. ``_3_conv``, with
    ``_bn`` after frozen_bn / bn and ``_gn`` after gn), whatever the variant.

    Args:
      depth: 50, 101 or 152.
      freeze_at: number of leading stages set ``trainable = False``: 0 nothing, 1 the stem
        (conv1), 2 stem + conv2 (papers' default), ... 5 everything. Setting the whole layer's
        ``trainable`` attribute afterwards overrides this, as for any Keras layer.
      norm: ``kmask.layers.normalization`` choice after every convolution: ``"frozen_bn"``
        (fixed pretrained statistics; the papers' choice), ``"bn"`` (batch statistics in
        training), ``"gn"`` (GroupNorm, 32 groups) or ``"none"``.
      norm_epsilon: epsilon of every normalization layer (see the variants above).
      stride_in_1x1: where a downsampling block's stride sits: on its first 1x1 convolution
        (True: MSRA / Caffe, keras.applications, detectron2 ``STRIDE_IN_1X1``) or on its 3x3
        convolution (False: torchvision "v1.5", ResNeXt). The projection shortcut is strided
        either way.
      conv_bias: whether the convolutions have biases (keras.applications: yes; detectron2,
        torchvision: no).
      groups: groups of the 3x3 convolutions (ResNeXt cardinality; 1 = ResNet).
      width_per_group: channels per group of stage conv2's 3x3 convolution (64 = ResNet).
      out_levels: the levels returned, ascending in 2..5; stages above the highest are not
        built. (2, 3, 4, 5) for an FPN; (4,) for the ResNet-C4 detectors, whose conv5 stage
        runs per RoI in the box head (``kmask.modeling.Res5Head``; Mask R-CNN figure 3).
      weights: path (str) of a ``backbone.npz`` written by ``kmask convert-weights`` from
        a torchvision or detectron2 ImageNet backbone (any layout; shapes are checked), or
        of a keras.applications ResNet50/101/152 weights file matching ``depth``: a legacy
        ``.h5`` download (with or without the classification top, e.g.
        ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``) or a Keras 3
        ``.weights.h5`` saved by ``model.save_weights`` of such a model. ``None`` = random
        initialization. Read once, at construction (not by ``from_config``); only valid for
        the keras.applications layout (``norm="frozen_bn"``, ``conv_bias=True``,
        ``stride_in_1x1=True``, ``groups=1``, ``width_per_group=64``).
      **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...). For
        ``get_config`` to work, pass ``dtype`` as a policy name (``"mixed_float16"``), not
        a ``DTypePolicy`` object: Keras' automatic config only captures plain values.

    Raises:
      ValueError: for an unsupported argument value, for ``weights`` with another layout, or
        when the weights file does not fit (the message names the file).
      FileNotFoundError: when the weights file does not exist.

    Reuse: any model of yours can take the C2..C5 maps (segmentation, detection heads); a
    trained kmask backbone loads into it by name with ``kmask.training.WeightTransfer``
    when the layer is named ``"backbone"``. Example::

        >>> import keras
        >>> from kmask.modeling import ResNet
        >>> backbone = ResNet(depth=50, norm="gn", freeze_at=0, name="backbone")
        >>> features = backbone(keras.random.normal((1, 64, 64, 3)))
        >>> {key: tuple(value.shape) for key, value in features.items()}
        {'C2': (1, 16, 16, 256), 'C3': (1, 8, 8, 512), 'C4': (1, 4, 4, 1024), 'C5': (1, 2, 2, 2048)}
    """

    def __init__(
        self,
        depth: int = 50,
        freeze_at: int = 2,
        norm: str = "frozen_bn",
        norm_epsilon: float = 1e-5,
        stride_in_1x1: bool = True,
        conv_bias: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
        out_levels: tuple[int, ...] = _LEVELS,
        weights: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        out_levels = tuple(int(level) for level in out_levels)
        if (
            not out_levels
            or list(out_levels) != sorted(set(out_levels))
            or not set(out_levels) <= set(_LEVELS)
        ):
            raise ValueError(
                f"ResNet out_levels must be ascending levels in 2..5, got {out_levels}"
            )
        if depth not in _BLOCKS_PER_STAGE:
            raise ValueError(
                f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
            )
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"ResNet freeze_at must be in 0..5, got {freeze_at}")
        check_norm(norm, "ResNet")
        if norm_epsilon < 0:
            raise ValueError(f"ResNet norm_epsilon must be >= 0, got {norm_epsilon}")
        if groups < 1 or width_per_group < 1:
            raise ValueError(
                f"ResNet groups and width_per_group must be >= 1, got {groups}, {width_per_group}"
            )
        if weights is not None:
            if not isinstance(weights, str):
                raise TypeError(
                    f"ResNet weights must be a str path (it is part of the layer config), "
                    f"got {type(weights).__name__}; pass str(path)"
                )
            arguments = {
                "norm": norm,
                "conv_bias": conv_bias,
                "stride_in_1x1": stride_in_1x1,
                "groups": groups,
                "width_per_group": width_per_group,
            }
            mismatches = {
                key: value for key, value in arguments.items() if value != _APPLICATIONS_LAYOUT[key]
            }
            if mismatches and not weights.endswith(".npz"):
                raise ValueError(
                    f"ResNet weights={weights!r}: keras.applications weight files only fit "
                    f"the keras.applications layout {_APPLICATIONS_LAYOUT}, got {mismatches}"
                )
        self.depth = depth
        self.freeze_at = freeze_at
        self.norm = norm
        self.norm_epsilon = norm_epsilon
        self.stride_in_1x1 = stride_in_1x1
        self.conv_bias = conv_bias
        self.groups = groups
        self.width_per_group = width_per_group
        self.out_levels = out_levels
        self.weights_path = weights

        dtype = self.dtype_policy
        self.stem_conv = keras.layers.Conv2D(
            64,
            7,
            strides=2,
            use_bias=conv_bias,
            kernel_initializer=conv_initializer(),
            name="conv1_conv",
            dtype=dtype,
        )
        self.stem_norm = norm_layer(norm, "conv1", norm_epsilon, dtype)
        self.blocks = []
        for level, count in zip(_LEVELS, _BLOCKS_PER_STAGE[depth], strict=True):
            if level > out_levels[-1]:
                break
            self.blocks += resnet_stage(
                level,
                count,
                2 if level > 2 else 1,
                groups,
                width_per_group,
                stride_in_1x1,
                norm,
                norm_epsilon,
                conv_bias,
                dtype,
            )
        self.freeze(freeze_at)
        if weights is not None and not _SKIP_WEIGHTS_FILE.get():
            if not Path(weights).is_file():
                raise FileNotFoundError(f"ResNet-{depth} weights file not found: {weights}")
            self.build((None, None, None, 3))
            load_resnet_weights(self._weighted_layers(), Path(weights), self.depth)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ResNet:
        """Rebuilds the architecture from ``get_config()`` without reading the weights file.

        A deserialized layer gets its variables from the saved model (or ``set_weights``),
        so a saved model does not depend on the original weights file still existing. The
        returned layer's ``get_config()`` equals ``config``.
        """
        token = _SKIP_WEIGHTS_FILE.set(True)
        try:
            return super().from_config(config)
        finally:
            _SKIP_WEIGHTS_FILE.reset(token)

    def output_specs(self) -> dict[str, FeatureSpec]:
        """``{"C2": (256, 4), "C3": (512, 8), "C4": (1024, 16), "C5": (2048, 32)}``, the
        ``out_levels`` of them."""
        return {
            f"C{level}": FeatureSpec(channels=64 * 2**level, stride=2**level)
            for level in self.out_levels
        }

    def freeze(self, stages: int) -> None:
        """Sets the first ``stages`` stages ``trainable = False`` and the others ``True``.

        Stage 1 is the stem (conv1), 2..5 are conv2..conv5 (torchvision's ``layer1`` ..
        ``layer4``): ``freeze(2)`` is the papers' default, ``freeze(5)`` freezes the whole
        backbone, ``freeze(0)`` trains it all. Weights created non-trainable (frozen BN)
        stay non-trainable. ``kmask.training.TrainablePreset`` calls this.

        Raises:
          ValueError: ``stages`` outside 0..5.
        """
        if not 0 <= stages <= 5:
            raise ValueError(f"ResNet.freeze: stages must be in 0..5, got {stages}")
        for stage in range(1, 6):
            for layer in self._stage_layers(range(stage, stage + 1)):
                layer.trainable = stage > stages

    def _stage_layers(self, stages: range) -> list[keras.layers.Layer]:
        """The sublayers of stages ``stages`` (1 = stem, 2..5 = conv2..conv5)."""
        layers = [self.stem_conv] if 1 in stages else []
        if 1 in stages and self.stem_norm is not None:
            layers.append(self.stem_norm)
        start = 0
        for level, count in zip(_LEVELS, _BLOCKS_PER_STAGE[self.depth], strict=True):
            if level in stages:
                layers.extend(self.blocks[start : start + count])
            start += count
        return layers

    def _weighted_layers(self) -> dict[str, keras.layers.Layer]:
        """Every convolution and normalization, keyed by its keras.applications name."""
        layers = [self.stem_conv, self.stem_norm]
        for block in self.blocks:
            layers.extend(block.named_layers())
        return {layer.name: layer for layer in layers if layer is not None}

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Creates all weights for ``input_shape = [B, H, W, 3]``."""
        if input_shape[-1] != 3:
            raise ValueError(f"ResNet expects images [B, H, W, 3], got shape {input_shape}")
        self.stem_conv.build((None, None, None, 3))
        if self.stem_norm is not None:
            self.stem_norm.build((None, None, None, 64))
        channels = 64
        for block in self.blocks:
            block.build((None, None, None, channels))
            channels = block.out_channels

    def call(self, images: Any) -> dict[str, Any]:
        """Runs the backbone.

        Args:
          images: ``[B, H, W, 3]`` normalized images (any float dtype).

        Returns:
          ``{"C2".."C5"}``: ``[B, ceil(H/s), ceil(W/s), C]`` for s = 4, 8, 16, 32 and
          C = 256, 512, 1024, 2048, in the layer's compute dtype.
        """
        x = ops.cast(images, self.compute_dtype)
        x = ops.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
        x = ops.relu(normalize(self.stem_norm, self.stem_conv(x)))
        # Zero padding equals PyTorch's -inf padding here: the values are >= 0 after ReLU.
        x = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = ops.max_pool(x, pool_size=3, strides=2, padding="valid")
        features = {}
        start = 0
        for level, count in zip(_LEVELS, _BLOCKS_PER_STAGE[self.depth], strict=True):
            if level > self.out_levels[-1]:
                break
            for block in self.blocks[start : start + count]:
                x = block(x)
            start += count
            if level in self.out_levels:
                features[f"C{level}"] = x
        return features


def load_resnet_weights(layers: dict[str, keras.layers.Layer], path: Path, depth: int) -> None:
    """Copies the weights of a keras.applications ResNet file, or of a ``backbone.npz`` of
    ``kmask convert-weights``, into ``layers`` (built, keyed by keras.applications name).

    ``ResNet`` loads its stem and stages with it, ``Res5Head`` its conv5 blocks.

    Raises:
      ValueError: naming the file and the layer when a layer is missing or its shapes differ.
    """
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            pairs: dict[str, list[tuple[int, np.ndarray]]] = {}
            for key in arrays.files:
                name, _, index = key.rpartition("/")
                pairs.setdefault(name, []).append((int(index), arrays[key]))
        source = {name: [a for _, a in sorted(items)] for name, items in pairs.items()}
    else:
        source = _read_applications_weights(path, depth)
    for name, layer in layers.items():
        if name not in source:
            raise ValueError(
                f"ResNet-{depth} weights file {path} has no weights for layer {name!r}"
            )
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in source[name]]
        if expected != found:
            raise ValueError(
                f"ResNet-{depth} weights file {path}: layer {name!r} has shapes "
                f"{found} but this ResNet's layer has {expected}"
            )
        layer.set_weights(source[name])


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
