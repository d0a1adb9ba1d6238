"""detectron2's Caffe2 layouts from known arrays, ImageNet backbones, the command and bad
input (the FPN and keypoint model-zoo layouts: test_detectron2_fpn.py, numerically)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import tensorflow as tf

import kmask
from kmask.cli import main
from kmask.convert import ConversionError, Detectron2Converter, TorchvisionConverter
from tests.cli_runner import assert_ok, run_kmask

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from tests.convert.torch_models import (  # noqa: E402
    random_torchvision_model,
)


def _c2_blobs(rng: np.random.Generator, model) -> dict[str, np.ndarray]:
    """Caffe2 blobs (MSRA R-50.pkl naming) with random values of the right shapes."""
    blobs = {"pred_w": rng.normal(size=(1000, 2048)), "pred_b": rng.normal(size=1000)}
    converter = Detectron2Converter("R-50")
    for name, layer in model._weighted_layers().items():
        prefix = converter.backbone_key(name)
        if hasattr(layer, "kernel"):
            kernel = layer.weights[0]
            shape = (kernel.shape[3], kernel.shape[2], kernel.shape[0], kernel.shape[1])
            blobs[f"{prefix}_w"] = rng.normal(size=shape).astype(np.float32)
            blobs[f"{prefix}_w_momentum"] = np.zeros(shape, np.float32)
        else:
            channels = layer.weights[0].shape[0]
            blobs[f"{prefix}_s"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
            blobs[f"{prefix}_b"] = rng.normal(size=channels).astype(np.float32)
    return blobs


def test_caffe2_backbone_layout_and_bad_input(tmp_path):
    from kmask.convert.checkpoint_reader import read_detectron2_pickle
    from kmask.modeling.backbones import build_backbone

    template = build_backbone("resnet", depth=50, conv_bias=False)
    template.build((None, None, None, 3))
    blobs = _c2_blobs(np.random.default_rng(0), template)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"blobs": blobs}, handle)
    _, backbone = Detectron2Converter("R-50").convert(read_detectron2_pickle(path), str(path))
    layers = backbone._weighted_layers()
    # Conv: [out, in, kh, kw] -> [kh, kw, in, out].
    np.testing.assert_array_equal(
        np.asarray(layers["conv2_block1_2_conv"].kernel),
        blobs["res2_0_branch2b_w"].transpose(2, 3, 1, 0),
    )
    # Frozen BN from scale and bias only: the effective scale is exactly the stored one.
    norm = layers["conv3_block2_1_bn"]
    gamma, beta, mean, variance = (np.asarray(w) for w in norm.weights)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    np.testing.assert_allclose(scale, blobs["res3_1_branch2a_bn_s"], rtol=1e-6)
    np.testing.assert_array_equal(beta, blobs["res3_1_branch2a_bn_b"])
    assert not mean.any()

    converter = Detectron2Converter("R-50")
    missing = {k: v for k, v in blobs.items() if k != "res4_2_branch2c_w"}
    with pytest.raises(ConversionError, match=r"x\.pkl: missing key 'res4_2_branch2c\.weight'"):
        converter.convert(read_pickled(tmp_path, missing), "x.pkl")
    extra = {**blobs, "res6_0_branch2a_w": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"keys do not belong.*res6_0_branch2a"):
        converter.convert(read_pickled(tmp_path, extra), "x.pkl")
    wrong = {**blobs, "res2_0_branch2a_w": np.zeros((64, 256, 1, 1), np.float32)}
    with pytest.raises(
        ConversionError,
        match=r"'res2_0_branch2a\.weight' of shape \(64, 256, 1, 1\)"
        r".*has shape \(1, 1, 64, 64\)",
    ):
        converter.convert(read_pickled(tmp_path, wrong), "x.pkl")


def read_pickled(tmp_path, blobs):
    from kmask.convert.checkpoint_reader import read_detectron2_pickle

    path = tmp_path / "blobs.pkl"
    with open(path, "wb") as handle:
        pickle.dump(blobs, handle)
    return read_detectron2_pickle(path)


def test_torchvision_imagenet_backbone_trains_from_its_npz(tmp_path):
    """resnet50 .pth -> backbone.npz -> model.backbone.weights gives torchvision's
    features (eval-mode BN = frozen BN with the same statistics)."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    pth = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), pth)
    out = tmp_path / "r50"
    kmask.convert.convert_weights("torchvision", pth, "resnet50", out)
    config = kmask.config.load_config(out / "config.yaml")
    from kmask.modeling.backbones import build_backbone

    backbone = build_backbone(config.model.backbone.type, **config.model.backbone.layer_arguments())
    image = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype(np.float32)
    with torch.no_grad():
        x = torch.from_numpy(image.transpose(0, 3, 1, 2))
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
    got = backbone(tf.constant(image))["C5"].numpy().transpose(0, 3, 1, 2)
    assert np.abs(got - expected.numpy()).max() < 1e-4 * np.abs(expected.numpy()).max()


def test_command_writes_a_run_that_loads_and_refuses_bad_input(tmp_path, capfd):
    model = random_torchvision_model("fasterrcnn_resnet50_fpn")
    pth = tmp_path / "faster.pth"
    torch.save(model.state_dict(), pth)
    out = tmp_path / "run"
    stdout = assert_ok(
        run_kmask(
            "convert-weights",
            "--from",
            "torchvision",
            "--input",
            str(pth),
            "--arch",
            "fasterrcnn_resnet50_fpn",
            "--out",
            str(out),
            cwd=tmp_path,
        )
    )
    assert "MiB" in stdout
    categories = json.loads((out / "categories.json").read_text())
    # One class per torchvision slot: ids 1..90, the unused ones "N/A" as in torchvision.
    assert [c["id"] for c in categories] == list(range(1, 91))
    assert categories[0]["name"] == "person" and categories[11]["name"] == "N/A"
    loaded = kmask.load_model(out)
    _, converted = TorchvisionConverter("fasterrcnn_resnet50_fpn").convert(
        {k: v.numpy() for k, v in model.state_dict().items()}, "tv"
    )
    for mine, theirs in zip(loaded.model.weights, converted.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs), err_msg=mine.path)
    assert not list(tmp_path.glob(".tmp-*"))

    # The error cases run in this process (kmask.cli.main), the success above as a user
    # would. An existing --out is kept unless --overwrite.
    args = ["convert-weights", "--from", "torchvision", "--input", str(pth), "--arch"]
    assert main([*args, "fasterrcnn_resnet50_fpn", "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capfd.readouterr().err
    # Another architecture's checkpoint: the detected one is named, nothing is written.
    assert main([*args, "maskrcnn_resnet50_fpn", "--out", str(tmp_path / "wrong")]) == 2
    assert "which looks like fasterrcnn_resnet50_fpn (" in capfd.readouterr().err
    assert not (tmp_path / "wrong").exists()
    # Not a checkpoint at all.
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    bad = [
        "convert-weights", "--from", "detectron2", "--input", str(text),
        "--arch", "mask_rcnn_R_50_FPN_3x", "--out", str(tmp_path / "bad"),
    ]  # fmt: skip
    assert main(bad) == 2
    assert f"{text}: not a detectron2 .pkl file" in capfd.readouterr().err
