"""``--arch`` from a checkpoint's keys and shapes (``ArchitectureDetection``): every
architecture of both converters detects as itself from files that torchvision builds (shape
only, on PyTorch's meta device) and their detectron2 layouts; a contradicted ``--arch`` is
refused in one line that names the detected one; the command converts without ``--arch``.
"""

from __future__ import annotations

import pickle
import re

import pytest

from kmask.cli import main
from kmask.config import load_config
from kmask.convert import ArchitectureDetection, Detectron2Converter, TorchvisionConverter
from kmask.errors import ConversionError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.models import detection  # noqa: E402
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone  # noqa: E402

from tests.convert.detectron2_reference import detectron2_resnet_keys  # noqa: E402
from tests.convert.torch_models import detectron2_arrays, random_torchvision_model  # noqa: E402

# detectron2's backbone names -> the torchvision ResNet of the same shapes.
_RESNETS = {"R_50": "resnet50", "R_101": "resnet101", "X_101_32x8d": "resnext101_32x8d"}
_DETECTORS = {
    "mask_rcnn": (detection.MaskRCNN, 91),
    "faster_rcnn": (detection.FasterRCNN, 91),
    "keypoint_rcnn": (detection.KeypointRCNN, 2),
}


def _meta_state(build) -> dict:
    """The ``state_dict`` of ``build()`` made on the meta device: shapes, no values."""
    with torch.device("meta"):
        return build().state_dict()


def _torchvision_state(arch: str, **options) -> dict:
    """torchvision's model of ``arch`` (random init, no download), shapes only."""
    if arch in TorchvisionConverter.BACKBONES:
        return _meta_state(lambda: getattr(torchvision.models, arch)(weights=None))
    return _meta_state(
        lambda: getattr(detection, arch)(weights=None, weights_backbone=None, **options)
    )


def _detect(converter, state) -> tuple[str, ...]:
    return ArchitectureDetection(converter, state, "model").candidates


def _named(prefix: str) -> tuple[str, ...]:
    """detectron2 architectures whose name starts with ``prefix``, in the converter's order."""
    return tuple(a for a in Detectron2Converter.ARCHITECTURES if a.startswith(prefix))


@pytest.mark.parametrize("arch", list(TorchvisionConverter.ARCHITECTURES))
def test_every_torchvision_architecture_detects_as_itself(arch):
    assert _detect(TorchvisionConverter, _torchvision_state(arch)) == (arch,)


def test_old_key_names_and_other_class_and_keypoint_counts_detect_too():
    # Fine-tuned models keep their architecture's keys with other row counts.
    state = _torchvision_state("maskrcnn_resnet50_fpn", num_classes=3)
    assert _detect(TorchvisionConverter, state) == ("maskrcnn_resnet50_fpn",)
    keypoints = _torchvision_state("keypointrcnn_resnet50_fpn", num_keypoints=5)
    assert _detect(TorchvisionConverter, keypoints) == ("keypointrcnn_resnet50_fpn",)
    # The released COCO_V1 files predate Conv2dNormActivation: their FPN, RPN and mask
    # convs have the older names, which the converter renames to today's.
    old = {}
    for key, value in state.items():
        key = re.sub(r"^(backbone\.fpn\.\w+_blocks\.\d)\.0\.", r"\1.", key)
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        key = re.sub(
            r"^roi_heads\.mask_head\.(\d)\.0\.",
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.",
            key,
        )
        old[key] = value
    assert "backbone.fpn.inner_blocks.0.weight" in old and "rpn.head.conv.weight" in old
    assert set(TorchvisionConverter("maskrcnn_resnet50_fpn").rename(old)) == set(state)
    assert _detect(TorchvisionConverter, old) == ("maskrcnn_resnet50_fpn",)


@pytest.mark.parametrize("backbone", list(_RESNETS))
@pytest.mark.parametrize("kind", list(_DETECTORS))
def test_detectron2_fpn_layouts_detect_by_backbone_and_heads(kind, backbone):
    """torchvision's R-CNN on each ResNet under detectron2's model-zoo keys: the
    architectures of that backbone and those heads (1x and 3x share a layout)."""
    model_class, slots = _DETECTORS[kind]

    def build():
        body = resnet_fpn_backbone(backbone_name=_RESNETS[backbone], weights=None)
        return model_class(body, num_classes=slots)

    state = detectron2_arrays(_meta_state(build))
    expected = _named(f"{kind}_{backbone}_FPN_")
    assert expected and _detect(Detectron2Converter, state) == expected


def _c4_state(backbone: str, masks: bool) -> dict:
    """detectron2's ``Res5ROIHeads`` layout (``test_detectron2_c4.py``): the ResNet to res4
    as ``backbone``, res5 in ``roi_heads``, an RPN of 15 anchors on res4's 1024 channels,
    the predictors on the pooled 2048 channels, the mask head's deconv and predictor."""
    with torch.device("meta"):
        net = getattr(torchvision.models, _RESNETS[backbone])()
    net.to_empty(device="cpu")  # memory without values, for detectron2_resnet_keys
    state = {
        ("roi_heads." if key.startswith("res5.") else "backbone.") + key: value
        for key, value in detectron2_resnet_keys(net).items()
    }
    shapes = {
        "proposal_generator.rpn_head.conv": (1024, 1024, 3, 3),
        "proposal_generator.rpn_head.objectness_logits": (15, 1024, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas": (60, 1024, 1, 1),
        "roi_heads.box_predictor.cls_score": (81, 2048),
        "roi_heads.box_predictor.bbox_pred": (320, 2048),
    }
    if masks:
        shapes["roi_heads.mask_head.deconv"] = (2048, 256, 2, 2)
        shapes["roi_heads.mask_head.predictor"] = (80, 256, 1, 1)
    for prefix, shape in shapes.items():
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = shape, shape[:1]
    return state


@pytest.mark.parametrize("backbone", ["R_50", "R_101"])
@pytest.mark.parametrize("kind", ["mask_rcnn", "faster_rcnn"])
def test_detectron2_c4_layouts_detect_as_c4(kind, backbone):
    state = _c4_state(backbone, masks=kind == "mask_rcnn")
    expected = _named(f"{kind}_{backbone}_C4_")
    assert expected and _detect(Detectron2Converter, state) == expected


def _caffe2_blobs(arch: str) -> dict:
    """An MSRA / FAIR ImageNet ``.pkl``'s blobs: the torchvision ResNet of the same shapes
    under the converter's Caffe2 names (``res2_0_branch2a_w``, ``..._bn_s``, ``_b``)."""
    names = {"R-50": "resnet50", "R-101": "resnet101", "X-101-32x8d": "resnext101_32x8d"}
    converter = Detectron2Converter(arch)
    blobs = {}
    for key, value in _torchvision_state(names[arch]).items():
        if key.startswith("fc."):
            blobs[f"pred_{key[3]}"] = value
            continue
        match = re.match(
            r"layer(\d)\.(\d+)\.(?:(conv|bn)(\d)|downsample\.(\d))\.(weight|bias)$", key
        )
        if match:
            stage, block, kind, index, shortcut, field = match.groups()
            kind = kind or ("conv" if shortcut == "0" else "bn")
            layer = f"conv{int(stage) + 1}_block{int(block) + 1}_{index or 0}_{kind}"
        elif key in ("conv1.weight", "bn1.weight", "bn1.bias"):
            layer, field = ("conv1_conv" if key.startswith("conv") else "conv1_bn"), key[4:]
        else:  # running statistics: the Caffe2 files have scale and bias only
            continue
        suffix = "_w" if layer.endswith("conv") else "_s" if field == "weight" else "_b"
        blobs[converter.backbone_key(layer) + suffix] = value
    return blobs


@pytest.mark.parametrize("arch", list(Detectron2Converter.BACKBONES))
def test_caffe2_imagenet_blobs_detect_as_their_backbone(arch):
    blobs = _caffe2_blobs(arch)
    assert "res2_0_branch2b_w" in blobs and "res_conv1_bn_s" in blobs
    assert _detect(Detectron2Converter, blobs) == (arch,)


@pytest.mark.parametrize(
    "converter, file, given, detected, fragment",
    [
        (TorchvisionConverter, "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
         "maskrcnn_resnet50_fpn", "its keys have no norm layers in the FPN, 1 RPN conv"),
        (TorchvisionConverter, "maskrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn",
         "maskrcnn_resnet50_fpn_v2", "its keys have norm layers in the FPN, 2 RPN convs"),
        (TorchvisionConverter, "fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn",
         "fasterrcnn_resnet50_fpn", "its keys have no mask head; maskrcnn_resnet50_fpn has "
         "a mask head"),
        (TorchvisionConverter, "resnext101_32x8d", "resnet101", "resnext101_32x8d",
         "its keys have a ResNeXt-101 32x8d; resnet101 has a ResNet-101"),
        (TorchvisionConverter, "maskrcnn_resnet50_fpn", "resnet50", "maskrcnn_resnet50_fpn",
         "its keys have detector heads; resnet50 has only an ImageNet backbone"),
        (Detectron2Converter, "mask_rcnn_R_50_C4", "mask_rcnn_R_50_FPN_1x",
         "mask_rcnn_R_50_C4_1x or mask_rcnn_R_50_C4_3x",
         "its keys have no FPN but res5 in the RoI heads (ResNet-C4), no box head convs or "
         "fcs; mask_rcnn_R_50_FPN_1x has an FPN, a box head of 0 convs and 2 fcs"),
    ],
)  # fmt: skip
def test_a_contradicted_arch_is_refused_in_one_line(converter, file, given, detected, fragment):
    """``file``: a torchvision architecture's state_dict, or detectron2's R-50-C4 Mask R-CNN."""
    c4 = file == "mask_rcnn_R_50_C4"
    arrays = _c4_state("R_50", masks=True) if c4 else _torchvision_state(file)
    detection = ArchitectureDetection(converter, arrays, "dl/model.pth")
    with pytest.raises(ConversionError) as raised:
        detection.resolve(given)
    message = str(raised.value)
    assert message.startswith(
        f"dl/model.pth: --arch {given} does not fit this checkpoint, which looks like {detected} ("
    )
    assert fragment in message and message.endswith(f"; pass --arch {detected}")
    assert "\n" not in message


def test_resolve_keeps_a_fitting_arch_and_leaves_unknown_layouts_to_the_converter():
    state = _torchvision_state("maskrcnn_resnet50_fpn")
    detection = ArchitectureDetection(TorchvisionConverter, state, "m.pth")
    assert detection.resolve(None) == detection.resolve("maskrcnn_resnet50_fpn")
    assert detection.resolve(None) == "maskrcnn_resnet50_fpn"
    # Three RPN convs: no architecture has them. A given --arch goes on to the converter
    # (which names the key that differs); without one, the keys are described.
    for index in (1, 2):
        state[f"rpn.head.conv.{index}.0.weight"] = state["rpn.head.conv.0.0.weight"]
    odd = ArchitectureDetection(TorchvisionConverter, state, "m.pth")
    assert odd.candidates == ()
    assert odd.resolve("maskrcnn_resnet50_fpn_v2") == "maskrcnn_resnet50_fpn_v2"
    with pytest.raises(ConversionError, match=r"^m\.pth: its keys \(detector heads, a ResNet-50,"):
        odd.resolve(None)
    with pytest.raises(ConversionError, match=r"3 RPN convs.* fit no --from torchvision arch"):
        odd.resolve(None)


# ----------------------------------------------------------------------- the command


def _args(path, out, *arch: str) -> list[str]:
    source = "torchvision" if str(path).endswith(".pth") else "detectron2"
    return ["convert-weights", "--from", source, "--input", str(path), "--out", str(out), *arch]


def test_the_command_converts_without_arch(tmp_path, capfd):
    model = random_torchvision_model("fasterrcnn_resnet50_fpn")
    path = tmp_path / "faster.pth"
    torch.save(model.state_dict(), path)
    out = tmp_path / "run"
    assert main(_args(path, out)) == 0, capfd.readouterr().err
    stdout = capfd.readouterr().out.splitlines()
    assert stdout[0] == "detected --arch fasterrcnn_resnet50_fpn from the checkpoint's keys"
    assert stdout[-1].startswith(f"converted {path} (torchvision fasterrcnn_resnet50_fpn) to ")
    # The v1 Faster R-CNN's config: no mask head, one RPN conv, no FPN norm, 2 fcs.
    model_config = load_config(out / "config.yaml").model
    assert model_config.mask_head is None and model_config.keypoint_head is None
    assert (model_config.rpn.num_conv, model_config.fpn.norm) == (1, "none")
    assert (model_config.box_head.num_conv, model_config.box_head.num_fc) == (0, 2)
    assert model_config.num_classes == 90


def test_the_command_names_the_detected_arch_for_a_wrong_one(tmp_path, capfd):
    with torch.device("meta"):
        model = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(model.to_empty(device="cpu").state_dict(), path)  # refused before reading values
    out = tmp_path / "run"
    assert main(_args(path, out, "--arch", "maskrcnn_resnet50_fpn_v2")) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kmask ")]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(
        f"kmask convert-weights: error: {path}: --arch maskrcnn_resnet50_fpn_v2 does not fit "
        "this checkpoint, which looks like maskrcnn_resnet50_fpn (its keys have "
    )
    assert lines[0].endswith("; pass --arch maskrcnn_resnet50_fpn")
    assert not out.exists()


def test_the_command_lists_the_candidates_when_several_fit(tmp_path, capfd):
    with torch.device("meta"):
        model = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = {k: v.numpy() for k, v in model.to_empty(device="cpu").state_dict().items()}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": detectron2_arrays(state), "__author__": "test"}))
    out = tmp_path / "run"
    assert main(_args(path, out)) == 2
    message = capfd.readouterr().err.splitlines()[-1]
    assert message.startswith(f"kmask convert-weights: error: {path}: its keys (detector heads, ")
    assert message.endswith(
        "fit several architectures: mask_rcnn_R_50_FPN_1x, mask_rcnn_R_50_FPN_3x (they convert "
        "to the same model); pass --arch with one of them"
    )
    assert not out.exists()
