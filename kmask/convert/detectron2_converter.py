"""detectron2 checkpoints -> kmask: model-zoo R-CNN FPN models and MSRA / FAIR backbones."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from kmask.convert.coco_categories import COCO_PERSON_CATEGORY
from kmask.convert.converter import Converter
from kmask.convert.weight_mapping import WeightMapping
from kmask.errors import ConversionError

_INPUT = {"channel_order": "BGR", "pixel_scale": 1.0, "pixel_mean": [103.53, 116.28, 123.675]}
_STD_R = [1.0, 1.0, 1.0]
_STD_X = [57.375, 57.12, 58.395]  # the FAIR ResNeXt backbones' PIXEL_STD
_DATA = {"min_size": [640, 672, 704, 736, 768, 800], "max_size": 1333, "size_divisibility": 32}


def _backbone(depth: int, resnext: bool) -> dict[str, Any]:
    resnet: dict[str, Any] = {
        "depth": depth,
        "norm": "frozen_bn",
        "norm_epsilon": 1e-5,
        "conv_bias": False,
        # MSRA ResNets stride on the 1x1 conv; the FAIR ResNeXt on the 3x3.
        "stride_in_1x1": not resnext,
    }
    if resnext:
        resnet.update(groups=32, width_per_group=8)
    return {"resnet": resnet}


def _model(depth: int, resnext: bool = False, masks: bool = True) -> dict[str, Any]:
    """detectron2's Base-RCNN-FPN config (``mask_rcnn_*_FPN_*`` / ``faster_rcnn_*``)."""
    pooler = {"pooler": {"sampling_ratio": 0, "aligned": True}}  # ROIAlignV2, adaptive
    model = {
        "input": {**_INPUT, "pixel_std": _STD_X if resnext else _STD_R},
        "backbone": _backbone(depth, resnext),
        "rpn": {
            "anchor_offset": 0.0,
            "post_nms_topk_train": 1000,
            "smooth_l1_beta": 0.0,
        },
        # detectron2 drops empty boxes (after clipping) from its results; kmask before NMS.
        "box_head": {**pooler, "smooth_l1_beta": 0.0, "min_box_size": 1e-6},
        "mask_head": dict(pooler) if masks else None,
    }
    return {"model": model, "data": dict(_DATA)}


def _c4_model(depth: int, masks: bool = True) -> dict[str, Any]:
    """detectron2's Base-RCNN-C4 (``mask_rcnn_R_*_C4_*`` / ``faster_rcnn_R_*_C4_*``): the
    backbone up to res4, the RPN on it with 15 anchors per position (sizes 32..512 x 3
    ratios, 12000 / 6000 pre-NMS and 2000 / 1000 post-NMS proposals for training / test),
    ``Res5ROIHeads``: ROIAlignV2 14x14 on res4, res5 with stride 2, average pool to the
    predictors, the mask head a 2x2 deconv of 256 channels on the 7x7 res5 maps (14x14
    masks)."""
    values = _model(depth, masks=masks)
    model = values["model"]
    model["backbone"]["out_levels"] = [4]
    model["fpn"] = None
    model["rpn"] = {
        "anchor_sizes": [[32.0, 64.0, 128.0, 256.0, 512.0]],
        "anchor_offset": 0.0,
        "smooth_l1_beta": 0.0,
        "pre_nms_topk_train": 12000,
        "post_nms_topk_train": 2000,
        "pre_nms_topk_test": 6000,
        "post_nms_topk_test": 1000,
    }
    model["res5_head"] = {
        "pooler": {"resolution": 14, "sampling_ratio": 0, "aligned": True},
        "stride": 2,
    }
    model["box_head"].update(pool="average", num_fc=0)
    if masks:
        model["mask_head"] = {"pooler": {"resolution": 7}, "num_conv": 0}
    return values


def _keypoints(depth: int, resnext: bool = False) -> dict[str, Any]:
    """detectron2's Base-Keypoint-RCNN-FPN: one class (person), no masks, the keypoint head
    (ROIAlignV2 14x14, 8 convs of 512, deconv 4x4 s2 to 17 maps, 2x bilinear), box
    smooth-L1 beta 0.5, 1500 training proposals per image."""
    values = _model(depth, resnext, masks=False)
    values["model"]["rpn"]["post_nms_topk_train"] = 1500
    values["model"]["box_head"]["smooth_l1_beta"] = 0.5
    values["model"]["keypoint_head"] = {"num_keypoints": 17}
    return values


def _imagenet(depth: int, resnext: bool = False) -> dict[str, Any]:
    model = {
        "input": {**_INPUT, "pixel_std": _STD_X if resnext else _STD_R},
        "backbone": _backbone(depth, resnext),
    }
    return {"model": model, "data": dict(_DATA)}


_RESNET_LAYER = re.compile(r"^conv(\d)_block(\d+)_(\d)_(conv|bn|gn)$")
_C2_BRANCHES = {0: "branch1", 1: "branch2a", 2: "branch2b", 3: "branch2c"}


class Detectron2Converter(Converter):
    """Converts detectron2 ``.pkl`` files (no PyTorch needed) to kmask models.

    Architectures (``--arch``), named as the model-zoo configs: ``mask_rcnn_R_50_FPN_1x``,
    ``mask_rcnn_R_50_FPN_3x``, ``mask_rcnn_R_101_FPN_3x``, ``mask_rcnn_X_101_32x8d_FPN_3x``,
    the ResNet-C4 ``mask_rcnn_R_50_C4_1x``, ``mask_rcnn_R_50_C4_3x``,
    ``mask_rcnn_R_101_C4_3x`` (``Res5ROIHeads``: conv5 in the RoI head, ``roi_heads.res5``),
    the ``faster_rcnn_*`` and ``keypoint_rcnn_*`` siblings (the person keypoint models:
    one class, COCO's 17 keypoints), and the ImageNet backbones ``R-50``, ``R-101`` (MSRA)
    and ``X-101-32x8d`` (FAIR), Caffe2 blob names.

    detectron2's conventions, reproduced in the config: BGR input minus the MSRA means
    (std 1, or the FAIR ResNeXt stds); stride on the 1x1 conv for MSRA ResNets, on the
    3x3 for ResNeXt; frozen BN eps 1e-5; anchors at offset 0, not rounded; RPN box
    weights (1, 1, 1, 1), 1000 proposals per level before and 1000 per image after NMS;
    ROIAlignV2 (``aligned=True``, adaptive sampling); smooth-L1 beta 0 (L1) in both box
    losses; predictors without background deltas or mask, background score last (moved
    first for kmask); NCHW flatten before ``fc1`` (reordered); deltas (dx, dy, dw, dh)
    reordered. Caffe2 backbones store BN as scale and bias only: they load as mean 0 and
    variance ``1 - eps``, which is detectron2's own upgrade of such files, so the scale is
    exactly the stored one.

    A ``pixel_mean`` / ``pixel_std`` pair inside the file overrides the architecture's.
    """

    SOURCE = "detectron2"
    ARCHITECTURES = {
        "mask_rcnn_R_50_FPN_1x": _model(50),
        "mask_rcnn_R_50_FPN_3x": _model(50),
        "mask_rcnn_R_101_FPN_3x": _model(101),
        "mask_rcnn_X_101_32x8d_FPN_3x": _model(101, resnext=True),
        "mask_rcnn_R_50_C4_1x": _c4_model(50),
        "mask_rcnn_R_50_C4_3x": _c4_model(50),
        "mask_rcnn_R_101_C4_3x": _c4_model(101),
        "faster_rcnn_R_50_C4_1x": _c4_model(50, masks=False),
        "faster_rcnn_R_50_C4_3x": _c4_model(50, masks=False),
        "faster_rcnn_R_101_C4_3x": _c4_model(101, masks=False),
        "faster_rcnn_R_50_FPN_1x": _model(50, masks=False),
        "faster_rcnn_R_50_FPN_3x": _model(50, masks=False),
        "faster_rcnn_R_101_FPN_3x": _model(101, masks=False),
        "faster_rcnn_X_101_32x8d_FPN_3x": _model(101, resnext=True, masks=False),
        "keypoint_rcnn_R_50_FPN_1x": _keypoints(50),
        "keypoint_rcnn_R_50_FPN_3x": _keypoints(50),
        "keypoint_rcnn_R_101_FPN_3x": _keypoints(101),
        "keypoint_rcnn_X_101_32x8d_FPN_3x": _keypoints(101, resnext=True),
        "R-50": _imagenet(50),
        "R-101": _imagenet(101),
        "X-101-32x8d": _imagenet(101, resnext=True),
    }
    DESCRIPTIONS = {
        "mask_rcnn_R_50_FPN_1x": "model zoo 137260431/model_final_a54504.pkl: box AP 38.6, "
        "mask AP 35.2",
        "mask_rcnn_R_50_FPN_3x": "model zoo 137849600/model_final_f10217.pkl: box AP 41.0, "
        "mask AP 37.2",
        "mask_rcnn_R_101_FPN_3x": "model zoo 138205316/model_final_a3ec72.pkl: box AP 42.9, "
        "mask AP 38.6",
        "mask_rcnn_X_101_32x8d_FPN_3x": "model zoo 139653917/model_final_2d9806.pkl: box AP "
        "44.3, mask AP 39.5",
        "mask_rcnn_R_50_C4_1x": "model zoo 137259246/model_final_9243eb.pkl: box AP 36.8, "
        "mask AP 32.2",
        "mask_rcnn_R_50_C4_3x": "model zoo 137849525/model_final_4ce675.pkl: box AP 39.8, "
        "mask AP 34.4",
        "mask_rcnn_R_101_C4_3x": "model zoo 138363239/model_final_a2914c.pkl: box AP 42.6, "
        "mask AP 36.7",
        "faster_rcnn_R_50_C4_1x": "model zoo 137257644/model_final_721ade.pkl: box AP 35.7",
        "faster_rcnn_R_50_C4_3x": "model zoo 137849393/model_final_f97cb7.pkl: box AP 38.4",
        "faster_rcnn_R_101_C4_3x": "model zoo 138204752/model_final_298dad.pkl: box AP 41.1",
        "faster_rcnn_R_50_FPN_1x": "model zoo 137257794/model_final_b275ba.pkl: box AP 37.9",
        "faster_rcnn_R_50_FPN_3x": "model zoo 137849458/model_final_280758.pkl: box AP 40.2",
        "faster_rcnn_R_101_FPN_3x": "model zoo 137851257/model_final_f6e8b1.pkl: box AP 42.0",
        "faster_rcnn_X_101_32x8d_FPN_3x": "model zoo 139173657/model_final_68b088.pkl: box AP 43.0",
        "keypoint_rcnn_R_50_FPN_1x": "model zoo COCO-Keypoints 137261548/model_final_04e291.pkl: "
        "box AP 53.6, keypoint AP 64.0",
        "keypoint_rcnn_R_50_FPN_3x": "model zoo COCO-Keypoints 137849621/model_final_a6e10b.pkl: "
        "box AP 55.4, keypoint AP 65.5",
        "keypoint_rcnn_R_101_FPN_3x": "model zoo COCO-Keypoints 138363331/model_final_997cc7.pkl: "
        "box AP 56.4, keypoint AP 66.1",
        "keypoint_rcnn_X_101_32x8d_FPN_3x": "model zoo COCO-Keypoints "
        "139686956/model_final_5ad38f.pkl: box AP 57.3, keypoint AP 66.0",
        "R-50": "ImageNetPretrained/MSRA/R-50.pkl",
        "R-101": "ImageNetPretrained/MSRA/R-101.pkl",
        "X-101-32x8d": "ImageNetPretrained/FAIR/X-101-32x8d.pkl",
    }
    BACKBONES = ("R-50", "R-101", "X-101-32x8d")
    # ImageNet classifier blobs of the Caffe2 files.
    IGNORED_KEYS = (r"^pred_[wb]$", r"^fc1000_[wb]$")

    def config_values(self, mapping: WeightMapping) -> dict[str, Any]:
        values = super().config_values(mapping)
        if mapping.has("pixel_mean") and mapping.has("pixel_std"):
            mean, std = (mapping.take(key).reshape(-1) for key in ("pixel_mean", "pixel_std"))
            for key, value in (("pixel_mean", mean), ("pixel_std", std)):
                if value.size != 3:
                    raise ConversionError(
                        f"{mapping.source}: key {key!r} of shape {mapping.shape(key)} holds "
                        f"{value.size} values; expected 3 (one per BGR channel)"
                    )
            if not (std > 0).all():
                raise ConversionError(
                    f"{mapping.source}: key 'pixel_std' is {std.tolist()}; every value must be "
                    "above 0 (the input is divided by it)"
                )
            values["model"]["input"].update(pixel_mean=mean.tolist(), pixel_std=std.tolist())
        return values

    def class_rows(self, mapping: WeightMapping) -> tuple[list[int], list[int], list[int]]:
        rows = mapping.shape("roi_heads.box_predictor.cls_score.weight", ndim=2)[0]
        classes = list(range(rows - 1))
        return [rows - 1, *classes], classes, classes  # background is detectron2's last row

    def norm_values(self, mapping: WeightMapping, prefix: str, layer: Any) -> list[np.ndarray]:
        if not self.backbone_only:
            return super().norm_values(mapping, prefix, layer)
        scale, bias = (mapping.take(f"{prefix}_{suffix}", ndim=1) for suffix in "sb")
        return [scale, bias, np.zeros_like(scale), np.full_like(scale, 1.0 - layer.epsilon)]

    def backbone_key(self, layer_name: str) -> str:
        if self.backbone_only:
            return self._c2_backbone_key(layer_name)
        # An FPN wraps the ResNet as its "bottom_up"; a C4 model's backbone is the ResNet.
        c4 = self.ARCHITECTURES[self.arch]["model"].get("fpn", {}) is None
        prefix = "backbone." if c4 else "backbone.bottom_up."
        if layer_name in ("conv1_conv", "conv1_bn"):
            return prefix + "stem.conv1" + (".norm" if layer_name.endswith("bn") else "")
        stage, block, index, kind = self._parse(layer_name)
        name = "shortcut" if index == 0 else f"conv{index}"
        return f"{prefix}res{stage}.{block - 1}.{name}" + ("" if kind == "conv" else ".norm")

    def _c2_backbone_key(self, layer_name: str) -> str:
        """Caffe2 blob prefixes (``res2_0_branch2a`` + ``_w``; ``..._bn`` + ``_s``/``_b``)."""
        if layer_name == "conv1_conv":
            return "conv1"
        if layer_name == "conv1_bn":
            return "res_conv1_bn"
        stage, block, index, kind = self._parse(layer_name)
        name = f"res{stage}_{block - 1}_{_C2_BRANCHES[index]}"
        return name if kind == "conv" else f"{name}_bn"

    @staticmethod
    def _parse(layer_name: str) -> tuple[int, int, int, str]:
        match = _RESNET_LAYER.match(layer_name)
        if match is None:
            raise ValueError(f"no detectron2 name for ResNet layer {layer_name!r}")
        return int(match[1]), int(match[2]), int(match[3]), match[4]

    def rename(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.backbone_only:
            return dict(arrays)
        # Caffe2 blobs: weights "<name>_w" -> "<name>.weight" for the shared conv code.
        return {
            re.sub(r"_w$", ".weight", key) if not key.startswith(("pred_", "fc1000_")) else key: v
            for key, v in arrays.items()
        }

    def res5_head_key(self, layer_name: str) -> str:
        stage, block, index, kind = self._parse(layer_name)
        name = "shortcut" if index == 0 else f"conv{index}"
        return f"roi_heads.res{stage}.{block - 1}.{name}" + ("" if kind == "conv" else ".norm")

    def fpn_keys(self, index: int, level: int, output: bool) -> tuple[str, str]:
        conv = f"backbone.fpn_{'output' if output else 'lateral'}{level}"
        return conv, f"{conv}.norm"

    def rpn_keys(self, num_conv: int) -> tuple[list[tuple[str, str]], str, str]:
        head = "proposal_generator.rpn_head"
        if num_conv == 1:
            convs = [(f"{head}.conv", f"{head}.conv.norm")]
        else:
            convs = [(f"{head}.conv.conv{k}", f"{head}.conv.conv{k}.norm") for k in range(num_conv)]
        return convs, f"{head}.objectness_logits", f"{head}.anchor_deltas"

    def box_head_keys(self, num_conv: int, num_fc: int) -> tuple[list[tuple[str, str]], list[str]]:
        head = "roi_heads.box_head"
        convs = [(f"{head}.conv{k + 1}", f"{head}.conv{k + 1}.norm") for k in range(num_conv)]
        return convs, [f"{head}.fc{k + 1}" for k in range(num_fc)]

    def box_predictor_keys(self) -> tuple[str, str]:
        return "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"

    def categories(self, num_classes: int) -> list[dict[str, Any]]:
        if self.arch.startswith("keypoint_rcnn"):
            return [dict(COCO_PERSON_CATEGORY)]
        return super().categories(num_classes)
