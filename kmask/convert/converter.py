"""Shared machinery of the checkpoint converters: architectures, class layouts, stages."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from kmask.config import Config, ConfigError, config_from_dict
from kmask.convert.coco_categories import COCO_CATEGORIES
from kmask.convert.weight_mapping import (
    WeightMapping,
    conv_kernel,
    delta_rows,
    dense_kernel,
    nchw_dense_kernel,
)
from kmask.data.category_map import CategoryMap
from kmask.errors import ConversionError
from kmask.modeling.roi_heads.instance_head import WeightSource, conv_stack_sources

_NORM_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


class Converter:
    """Base of ``TorchvisionConverter`` and ``Detectron2Converter``.

    A subclass names its source (``SOURCE``), lists its architectures (``ARCHITECTURES``:
    name -> the config values that reproduce the source's conventions) and names the
    source key of every layer of the backbone, FPN, RPN and box head; each instance head
    names its own (``InstanceHead.weight_sources(SOURCE)``). This class builds the kmask
    model from the config and fills every weight, checking shapes and that no key is left
    over.

    Args:
      arch: one of ``ARCHITECTURES``.

    Raises:
      ConversionError: for an unknown architecture.
    """

    #: the converter's name, which the instance heads' ``weight_sources`` know.
    SOURCE = ""
    #: name -> nested config values (``kmask.config`` sections) of the architecture.
    ARCHITECTURES: Mapping[str, Mapping[str, Any]] = {}
    #: name -> description (where the checkpoint comes from and what it scores).
    DESCRIPTIONS: Mapping[str, str] = {}
    #: keys that carry no weights.
    IGNORED_KEYS: tuple[str, ...] = (r"num_batches_tracked$",)
    #: the architectures that are ImageNet backbones (converted to a backbone weights file).
    BACKBONES: tuple[str, ...] = ()

    def __init__(self, arch: str) -> None:
        if arch not in self.ARCHITECTURES:
            raise ConversionError(
                f"unknown --arch {arch!r} for {type(self).__name__}; choose one of "
                f"{', '.join(sorted(self.ARCHITECTURES))}"
            )
        self.arch = arch

    @property
    def backbone_only(self) -> bool:
        """Whether the architecture is an ImageNet backbone (no detector)."""
        return self.arch in self.BACKBONES

    # ----------------------------------------------------------------- the config

    def config_values(self, mapping: WeightMapping) -> dict[str, Any]:
        """The nested config values of the architecture (subclasses may read the file)."""
        return copy.deepcopy(dict(self.ARCHITECTURES[self.arch]))

    def class_rows(self, mapping: WeightMapping) -> tuple[list[int], list[int], list[int]]:
        """Source rows of kmask's classes: ``(score rows [background, class 0..K-1], box
        groups [classes (with background first when the source predicts it)], channels of
        the instance heads' per-class outputs, the mask predictor's (likewise))``.
        Implemented by detector converters."""
        raise NotImplementedError

    def categories(self, num_classes: int) -> list[dict[str, Any]]:
        """COCO ``categories`` of the converted model: the real COCO ids and names for a
        COCO checkpoint, ``class_1`` .. otherwise (a checkpoint trained on other data)."""
        if num_classes == len(COCO_CATEGORIES):
            return [dict(c) for c in COCO_CATEGORIES]
        return [dict(c) for c in CategoryMap.placeholder(num_classes).categories]

    # ----------------------------------------------------------------- conversion

    def convert(
        self, arrays: Mapping[str, np.ndarray], source: str
    ) -> tuple[Config, keras.Model | keras.layers.Layer]:
        """Builds the kmask model of the architecture and fills it from ``arrays``.

        Returns:
          ``(config, model)``: the full configuration and the built ``MaskRCNN`` (for an
          ImageNet backbone architecture: the ``ResNet`` layer).

        Raises:
          ConversionError: naming the file and the key for missing, unused or misshapen
            arrays; naming the instance head that has no mapping for this converter.
        """
        from kmask.modeling.backbones import build_backbone
        from kmask.modeling.factory import build_float32_model

        mapping = WeightMapping(self.rename(arrays), source, self.IGNORED_KEYS)
        values = self.config_values(mapping)
        if not self.backbone_only:
            scores, _, _ = self.class_rows(mapping)
            values["model"]["num_classes"] = len(scores) - 1
        try:
            config = config_from_dict(values)
        except ConfigError as error:
            raise ConversionError(f"{source}: {error}") from None
        if self.backbone_only:
            backbone_config = config.model.backbone
            backbone = build_backbone(
                backbone_config.type, **backbone_config.layer_arguments(), name="backbone"
            )
            backbone.build((None, None, None, 3))
            self.assign_backbone(mapping, backbone)
            mapping.finish()
            return config, backbone
        model = build_float32_model(config.model)
        heads = [] if model.roi_heads is None else model.roi_heads.instance_heads
        sources = [self.instance_head_sources(mapping, head) for head in heads]
        self.assign_backbone(mapping, model.backbone)
        if model.fpn is not None:
            self.assign_fpn(mapping, model.fpn)
        self.assign_rpn_head(mapping, model.rpn.head)
        if model.roi_heads is not None:
            if model.roi_heads.shared_head is not None:
                self.assign_res5_head(mapping, model.roi_heads.shared_head)
            self.assign_box_head(mapping, model.roi_heads.box_head)
        for head_sources in sources:
            self.assign_sources(mapping, head_sources)
        mapping.finish()
        return config, model

    def rename(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keys of older releases of the source renamed to today's (identity here)."""
        return dict(arrays)

    # ----------------------------------------------------------------- key names

    def backbone_key(self, layer_name: str) -> str:
        """Source prefix of a ``ResNet`` sublayer (keras.applications names)."""
        raise NotImplementedError

    def res5_head_key(self, layer_name: str) -> str:
        """Source prefix of a ``Res5Head`` sublayer (``conv5_block1_1_conv``, ...) of a
        ResNet-C4 model."""
        raise NotImplementedError(f"{type(self).__name__} has no ResNet-C4 architectures")

    def fpn_keys(self, index: int, level: int, output: bool) -> tuple[str, str]:
        """Source prefixes of (conv, norm) of FPN lateral (``output=False``) or output conv."""
        raise NotImplementedError

    def rpn_keys(self, num_conv: int) -> tuple[list[tuple[str, str]], str, str]:
        """``([(conv, norm) prefixes of the shared convs], objectness, deltas)``."""
        raise NotImplementedError

    def box_head_keys(self, num_conv: int, num_fc: int) -> tuple[list[tuple[str, str]], list[str]]:
        """``([(conv, norm)], [fc])`` prefixes of the box head trunk."""
        raise NotImplementedError

    def box_predictor_keys(self) -> tuple[str, str]:
        """(class score, box regression) prefixes."""
        raise NotImplementedError

    # ----------------------------------------------------------------- assignment

    def norm_values(self, mapping: WeightMapping, prefix: str, layer: Any) -> list[np.ndarray]:
        """``[gamma, beta, mean, variance]`` of the norm at ``prefix``."""
        return [mapping.take(f"{prefix}.{suffix}", ndim=1) for suffix in _NORM_SUFFIXES]

    def _conv(
        self,
        mapping: WeightMapping,
        conv: keras.layers.Layer,
        prefix: str,
        out_rows: np.ndarray | None = None,
    ) -> None:
        keys = [f"{prefix}.weight"] + ([f"{prefix}.bias"] if conv.use_bias else [])
        arrays = [mapping.take(keys[0], ndim=4), *(mapping.take(k, ndim=1) for k in keys[1:])]
        # ConvTranspose2d weights are [in, out, kh, kw].
        axis = 1 if isinstance(conv, keras.layers.Conv2DTranspose) else 0
        weight, *bias = mapping.outputs(conv, keys, arrays, axis=axis, rows=out_rows)
        mapping.assign(conv, keys, [conv_kernel(weight), *bias])

    def _norm(self, mapping: WeightMapping, norm: Any, prefix: str) -> None:
        if norm is None:
            return
        values = self.norm_values(mapping, prefix, norm)
        keys = [f"{prefix}.{suffix}" for suffix in _NORM_SUFFIXES]
        if len(norm.weights) == 2:  # GroupNormalization: gamma, beta
            values, keys = values[:2], keys[:2]
        mapping.assign(norm, keys, values)

    def _dense(
        self,
        mapping: WeightMapping,
        dense: keras.layers.Layer,
        prefix: str,
        rows: np.ndarray | None = None,
        pooled: tuple[int, int, int] | None = None,
    ) -> None:
        keys = [f"{prefix}.weight", f"{prefix}.bias"]
        arrays = [mapping.take(keys[0], ndim=2), mapping.take(keys[1], ndim=1)]
        weight, bias = mapping.outputs(dense, keys, arrays, rows=rows)
        kernel = dense_kernel(weight) if pooled is None else nchw_dense_kernel(weight, *pooled)
        mapping.assign(dense, keys, [kernel, bias])

    def assign_backbone(self, mapping: WeightMapping, backbone: keras.layers.Layer) -> None:
        """Fills a ``ResNet`` (convs and norms, named as keras.applications)."""
        self._assign_resnet_layers(mapping, backbone._weighted_layers(), self.backbone_key)

    def assign_res5_head(self, mapping: WeightMapping, head: keras.layers.Layer) -> None:
        """Fills the conv5 blocks of a ResNet-C4 model's ``Res5Head``."""
        self._assign_resnet_layers(mapping, head.weighted_layers(), self.res5_head_key)

    def _assign_resnet_layers(
        self,
        mapping: WeightMapping,
        layers: dict[str, keras.layers.Layer],
        key: Callable[[str], str],
    ) -> None:
        """Fills ResNet convs and norms (keras.applications names) from their ``key``s."""
        for name, layer in layers.items():
            if isinstance(layer, keras.layers.Conv2D):
                self._conv(mapping, layer, key(name))
            else:
                self._norm(mapping, layer, key(name))

    def assign_fpn(self, mapping: WeightMapping, fpn: keras.layers.Layer) -> None:
        """Fills the FPN's lateral and output convs (and their norms)."""
        for index, level in enumerate(fpn.backbone_levels):
            for output, convs, norms in (
                (False, fpn.lateral_convs, fpn.lateral_norms),
                (True, fpn.output_convs, fpn.output_norms),
            ):
                conv_key, norm_key = self.fpn_keys(index, level, output)
                self._conv(mapping, convs[index], conv_key)
                self._norm(mapping, norms[index], norm_key)

    def assign_rpn_head(self, mapping: WeightMapping, head: keras.layers.Layer) -> None:
        """Fills the RPN head; box deltas go from (dx, dy, dw, dh) to (dy, dx, dh, dw)."""
        convs, objectness, deltas = self.rpn_keys(head.num_conv)
        self.assign_sources(mapping, conv_stack_sources(head.conv, convs))
        self._conv(mapping, head.objectness, objectness)
        self._conv(mapping, head.deltas, deltas, out_rows=delta_rows(head.num_anchors))

    def assign_box_head(self, mapping: WeightMapping, head: keras.layers.Layer) -> None:
        """Fills the box head: the first fc reads NCHW-flattened features in PyTorch."""
        convs, fcs = self.box_head_keys(head.convs.num_conv, len(head.fcs))
        self.assign_sources(mapping, conv_stack_sources(head.convs, convs))
        side = head.pooler_resolution
        for i, (fc, key) in enumerate(zip(head.fcs, fcs)):
            pooled = (fc.kernel.shape[0] // side**2, side, side) if i == 0 else None
            self._dense(mapping, fc, key, pooled=pooled)
        scores, boxes, _ = self.class_rows(mapping)
        score_key, box_key = self.box_predictor_keys()
        self._dense(mapping, head.cls_score, score_key, rows=np.asarray(scores))
        self._dense(
            mapping,
            head.bbox_pred,
            box_key,
            rows=np.concatenate([delta_rows(1) + 4 * group for group in boxes]),
        )

    def instance_head_sources(
        self, mapping: WeightMapping, head: keras.layers.Layer
    ) -> list[WeightSource]:
        """The head's ``weight_sources`` for this converter.

        Raises:
          ConversionError: naming the head when it has no mapping for ``SOURCE`` (a head
            the source library does not have).
        """
        sources = head.weight_sources(self.SOURCE) if hasattr(head, "weight_sources") else None
        if sources is None:
            raise ConversionError(
                f"{mapping.source}: the model's instance head {head.name!r} "
                f"({type(head).__name__}) has no {self.SOURCE} weight mapping "
                "(InstanceHead.weight_sources); remove its section from the configuration"
            )
        return sources

    def assign_sources(self, mapping: WeightMapping, sources: Sequence[WeightSource]) -> None:
        """Fills each source's layer: convs (``Conv2DTranspose`` too) and fcs from PyTorch
        layouts, norms from their four arrays; ``class_rows`` outputs keep the channels of
        kmask's classes (``class_rows``)."""
        for source in sources:
            layer, rows = source.layer, None
            if source.class_rows:
                rows = np.asarray(self.class_rows(mapping)[2])
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
                self._conv(mapping, layer, source.key, out_rows=rows)
            elif isinstance(layer, keras.layers.Dense):
                self._dense(mapping, layer, source.key, rows=rows)
            else:
                self._norm(mapping, layer, source.key)
