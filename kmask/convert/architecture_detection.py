"""Which ``--arch`` values a checkpoint's keys and shapes fit (``ArchitectureDetection``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kmask.config import config_from_dict
from kmask.errors import ConversionError

if TYPE_CHECKING:
    from kmask.convert.converter import Converter

# Blocks of conv2..conv5 -> ResNet depth (He et al. 2016, table 1).
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What a checkpoint holds, in the terms that tell the architectures apart. The
    detector fields keep their defaults for an ImageNet backbone file."""

    detector: bool
    backbone: str  # "a ResNet-50", "a ResNeXt-101 32x8d", or what was found instead
    fpn: bool = False
    fpn_norm: bool = False
    res5_head: bool = False  # ResNet-C4: conv5 in the RoI heads
    rpn_convs: int = 0
    box_head: tuple[int, int] = (0, 0)  # (convs, fcs)
    heads: frozenset[str] = frozenset()  # instance heads by config section: "mask_head", ...

    def phrases(self, head_names: frozenset[str]) -> dict[str, str]:
        """Feature -> how it reads after "its keys have" (the heads of ``head_names`` one
        by one)."""
        if not self.detector:
            return {"detector": "only an ImageNet backbone", "backbone": self.backbone}
        necks = {
            (True, False): "an FPN",
            (False, True): "no FPN but res5 in the RoI heads (ResNet-C4)",
            (False, False): "no FPN and no res5 in the RoI heads",
            (True, True): "an FPN and res5 in the RoI heads",
        }
        convs, fcs = self.box_head
        phrases = {
            "detector": "detector heads",
            "backbone": self.backbone,
            "neck": necks[self.fpn, self.res5_head],
        }
        if self.fpn:
            phrases["fpn_norm"] = f"{'' if self.fpn_norm else 'no '}norm layers in the FPN"
        phrases["rpn_convs"] = _plural(self.rpn_convs, "RPN conv")
        phrases["box_head"] = (
            f"a box head of {_plural(convs, 'conv')} and {_plural(fcs, 'fc')}"
            if convs or fcs
            else "no box head convs or fcs"
        )
        for name in sorted(head_names):
            kind = name.removesuffix("_head")
            phrases[name] = f"a {kind} head" if name in self.heads else f"no {kind} head"
        return phrases

    def differences(self, other: _Layout) -> tuple[list[str], list[str]]:
        """(this layout's phrases, ``other``'s) for the features where they differ; only
        detector and backbone when one of them is not a detector."""
        names = self.heads | other.heads
        mine, theirs = self.phrases(names), other.phrases(names)
        keys = [k for k in mine if k in theirs and mine[k] != theirs[k]]
        if not (self.detector and other.detector):
            keys = [k for k in keys if k in ("detector", "backbone")]
        return [mine[k] for k in keys], [theirs[k] for k in keys]

    def summary(self) -> str:
        return ", ".join(self.phrases(self.heads).values())


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _shape(value: Any) -> tuple[int, ...]:
    """The shape of an array, a tensor (the meta device's too) or a shape."""
    return tuple(int(d) for d in (value.shape if hasattr(value, "shape") else value))


def _backbone_name(depth: int, groups: int, width_per_group: int) -> str:
    if groups == 1 and width_per_group == 64:
        return f"a ResNet-{depth}"
    return f"a ResNeXt-{depth} {groups}x{width_per_group}d"


def _resnet(shapes: Mapping[str, Any], conv: Callable[[int, int, int], str]) -> str:
    """The ResNet of a checkpoint: ``conv(stage, block, index)`` is the key of the weight of
    conv ``index`` (1..3) of ``block`` (0-based) of ``stage`` (2..5). Depth from the blocks
    per stage; groups from the grouped 3x3 conv of res2's first block, whose weight is
    [width, width / groups, 3, 3] with width = groups x width_per_group."""
    blocks = []
    for stage in range(2, 6):
        count = 0
        while conv(stage, count, 1) in shapes:
            count += 1
        blocks.append(count)
    if not any(blocks):
        return "no ResNet"
    depth = _DEPTHS.get(tuple(blocks))
    found = f"a ResNet of {'-'.join(map(str, blocks))} blocks in conv2..conv5"
    grouped = _shape(shapes.get(conv(2, 0, 2), ()))
    if depth is None or len(grouped) != 4 or grouped[1] < 1 or grouped[0] % grouped[1]:
        return found
    return _backbone_name(depth, grouped[0] // grouped[1], grouped[1])


def _count(shapes: Mapping[str, Any], pattern: str) -> int:
    return sum(1 for key in shapes if re.match(pattern, key))


def _heads(shapes: Mapping[str, Any], patterns: Mapping[str, str]) -> frozenset[str]:
    return frozenset(name for name, pattern in patterns.items() if _count(shapes, pattern))


def _torchvision_layout(shapes: Mapping[str, Any]) -> _Layout:
    """torchvision ``state_dict`` keys; the FPN and RPN convs of files saved before
    ``Conv2dNormActivation`` (``inner_blocks.0.weight``, ``rpn.head.conv.weight``) too."""
    detector = any(key.startswith("backbone.body.") for key in shapes)
    prefix = "backbone.body." if detector else ""
    backbone = _resnet(shapes, lambda s, b, i: f"{prefix}layer{s - 1}.{b}.conv{i}.weight")
    if not detector:
        return _Layout(False, backbone)
    return _Layout(
        True,
        backbone,
        fpn=_count(shapes, r"backbone\.fpn\.") > 0,
        fpn_norm=_count(shapes, r"backbone\.fpn\.(inner|layer)_blocks\.\d+\.1\.weight$") > 0,
        rpn_convs=_count(shapes, r"rpn\.head\.conv\.(\d+\.0\.)?weight$"),
        box_head=(  # v1: TwoMLPHead fc6, fc7; v2: (conv, norm) blocks, then a Linear
            _count(shapes, r"roi_heads\.box_head\.\d+\.0\.weight$"),
            _count(shapes, r"roi_heads\.box_head\.(fc)?\d+\.weight$"),
        ),
        heads=_heads(
            shapes,
            {
                "mask_head": r"roi_heads\.mask_(head|predictor)\.",
                "keypoint_head": r"roi_heads\.keypoint_(head|predictor)\.",
            },
        ),
    )


def _detectron2_layout(shapes: Mapping[str, Any]) -> _Layout:
    """detectron2 model-zoo keys (FPN: ``backbone.bottom_up.res2...``; ResNet-C4:
    ``backbone.res2..res4`` and ``roi_heads.res5``) or Caffe2 ImageNet blobs
    (``res2_0_branch2a_w``)."""
    if not any(key.startswith("backbone.") for key in shapes):
        return _Layout(
            False, _resnet(shapes, lambda s, b, i: f"res{s}_{b}_branch2{'abc'[i - 1]}_w")
        )
    fpn = _count(shapes, r"backbone\.fpn_") > 0
    res5_head = "roi_heads.res5.0.conv1.weight" in shapes
    trunk = "backbone.bottom_up." if fpn else "backbone."

    def conv(stage: int, block: int, index: int) -> str:
        root = "roi_heads." if stage == 5 and res5_head else trunk
        return f"{root}res{stage}.{block}.conv{index}.weight"

    return _Layout(
        True,
        _resnet(shapes, conv),
        fpn=fpn,
        fpn_norm=_count(shapes, r"backbone\.fpn_(lateral|output)\d\.norm\.weight$") > 0,
        res5_head=res5_head,
        rpn_convs=_count(shapes, r"proposal_generator\.rpn_head\.conv\.(conv\d+\.)?weight$"),
        box_head=(
            _count(shapes, r"roi_heads\.box_head\.conv\d+\.weight$"),
            _count(shapes, r"roi_heads\.box_head\.fc\d+\.weight$"),
        ),
        heads=_heads(
            shapes,
            {
                "mask_head": r"roi_heads\.mask_head\.",
                "keypoint_head": r"roi_heads\.keypoint_head\.",
            },
        ),
    )


# Converter SOURCE -> how its checkpoints' keys read.
_READERS = {"torchvision": _torchvision_layout, "detectron2": _detectron2_layout}


def _expected_layout(converter: type[Converter], arch: str) -> _Layout:
    """The layout of ``arch`` from its config values (``converter.ARCHITECTURES``), so the
    detection and the converter agree on every architecture."""
    model = config_from_dict(converter.ARCHITECTURES[arch]).model
    resnet = model.backbone.settings
    backbone = _backbone_name(resnet.depth, resnet.groups, resnet.width_per_group)
    if arch in converter.BACKBONES:
        return _Layout(False, backbone)
    box = model.box_head
    return _Layout(
        True,
        backbone,
        fpn=model.fpn is not None,
        fpn_norm=model.fpn is not None and model.fpn.norm != "none",
        res5_head=model.res5_head is not None,
        rpn_convs=model.rpn.num_conv,
        box_head=(0, 0) if box is None else (box.num_conv, box.num_fc),
        heads=frozenset(model.instance_heads),
    )


class ArchitectureDetection:
    """The architectures (``--arch`` values) of a converter whose layout a checkpoint has.

    The layout is read from the keys and shapes alone: detector or ImageNet backbone; the
    ResNet's depth (blocks per stage) and ResNeXt groups (the grouped 3x3 conv's weight
    shape); FPN or ResNet-C4 (``res5`` in the RoI heads); norm layers in the FPN
    (torchvision's v2: ``backbone.fpn.inner_blocks.0.1.weight``); the RPN convs; the box
    head's convs and fcs; the mask and keypoint heads. Each architecture's layout comes
    from its config values (``ARCHITECTURES``), so the two cannot drift apart. Class
    counts, keypoint counts and weight values are not looked at: a fine-tuned checkpoint
    detects as its architecture.

    Args:
      converter: the converter class (``TorchvisionConverter`` or ``Detectron2Converter``).
      arrays: the checkpoint's ``{key: array}`` as its reader returns it (values: anything
        with a ``shape``, e.g. NumPy arrays or meta-device tensors, or shapes).
      source: the file, named in errors.

    Attributes:
      candidates: the fitting architectures, in ``ARCHITECTURES`` order; several when
        architectures share a layout (detectron2's 1x and 3x schedules), none when no
        architecture has it.

    Example:
        >>> detection = ArchitectureDetection(TorchvisionConverter, state_dict, "x.pth")
        >>> detection.candidates
        ('maskrcnn_resnet50_fpn_v2',)
    """

    def __init__(self, converter: type[Converter], arrays: Mapping[str, Any], source: str) -> None:
        self.converter = converter
        self.source = source
        self.layout = _READERS[converter.SOURCE](arrays)
        self.candidates = tuple(
            arch
            for arch in converter.ARCHITECTURES
            if _expected_layout(converter, arch) == self.layout
        )

    def resolve(self, arch: str | None) -> str:
        """``arch`` when given and not contradicted by the keys (or when no architecture
        has the checkpoint's layout: the converter then names the key that differs), else
        the one candidate.

        Args:
          arch: one of the converter's ``ARCHITECTURES``, or None to detect it.

        Raises:
          ConversionError: in one line naming the file: ``arch`` has another layout than
            the checkpoint (naming the detected architecture and the features that
            differ); ``arch`` is None and several or no architectures fit.
        """
        names = self.candidates
        listing = " or ".join(names)
        if arch is not None:
            if not names or arch in names:
                return arch
            mine, theirs = self.layout.differences(_expected_layout(self.converter, arch))
            raise ConversionError(
                f"{self.source}: --arch {arch} does not fit this checkpoint, which looks like "
                f"{listing} (its keys have {', '.join(mine)}; {arch} has {', '.join(theirs)}); "
                f"pass --arch {listing}"
            )
        if len(names) == 1:
            return names[0]
        if not names:
            raise ConversionError(
                f"{self.source}: its keys ({self.layout.summary()}) fit no --from "
                f"{self.converter.SOURCE} architecture; pass --arch to have the keys that "
                "differ named (kmask convert-weights --help lists the architectures)"
            )
        same = all(
            self.converter.ARCHITECTURES[name] == self.converter.ARCHITECTURES[names[0]]
            for name in names
        )
        raise ConversionError(
            f"{self.source}: its keys ({self.layout.summary()}) fit several architectures: "
            f"{', '.join(names)}{' (they convert to the same model)' if same else ''}; "
            "pass --arch with one of them"
        )
