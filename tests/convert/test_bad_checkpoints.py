"""Checkpoints that cannot give a working model are refused with one line naming the key
(and shapes); bfloat16 checkpoints convert."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kmask.cli import main
from kmask.convert.weight_mapping import conv_kernel

torch = pytest.importorskip("torch")
from tests.convert.torch_models import detectron2_arrays, random_torchvision_model  # noqa: E402

DETECTOR = "fasterrcnn_resnet50_fpn"


@pytest.fixture(scope="module")
def detector_state() -> dict[str, np.ndarray]:
    """A torchvision ``fasterrcnn_resnet50_fpn`` state_dict (random weights)."""
    return {k: v.numpy() for k, v in random_torchvision_model(DETECTOR).state_dict().items()}


@pytest.fixture(scope="module")
def resnet_state(detector_state) -> dict[str, np.ndarray]:
    """Its backbone as an ImageNet ``resnet50`` state_dict, with the int64 BN counters
    (``num_batches_tracked``) that the converter ignores."""
    prefix = "backbone.body."
    state = {k.removeprefix(prefix): v for k, v in detector_state.items() if k.startswith(prefix)}
    assert state["bn1.num_batches_tracked"].dtype == np.int64
    return state


def _convert(tmp_path, arch: str, state: dict) -> tuple[int, str, object]:
    """``kmask convert-weights`` of ``state`` saved as a ``.pth``: (status, the path)."""
    path = tmp_path / "model.pth"
    torch.save(
        {k: v if torch.is_tensor(v) else torch.from_numpy(v) for k, v in state.items()}, path
    )
    out = tmp_path / "run"
    args = ["--input", str(path), "--arch", arch, "--out", str(out)]
    return main(["convert-weights", "--from", "torchvision", *args]), path, out


def _assert_refused(tmp_path, capfd, arch: str, state: dict, *fragments: str) -> None:
    status, path, out = _convert(tmp_path, arch, state)
    err = capfd.readouterr().err
    assert status == 2, err
    message = err.splitlines()[-1]  # after TensorFlow's log lines, if any
    assert message.startswith(f"kmask convert-weights: error: {path}: key ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()


def _replaced(state: dict, key: str, value) -> dict:
    return {**state, key: value}


def test_nan_and_infinite_weights_are_refused(resnet_state, tmp_path, capfd):
    weight = resnet_state["layer1.0.conv2.weight"].astype(np.float64)
    weight[0, 0, 0, :3] = [np.nan, -np.inf, 1e300]  # 1e300 overflows float32
    _assert_refused(
        tmp_path, capfd, "resnet50", _replaced(resnet_state, "layer1.0.conv2.weight", weight),
        "key 'layer1.0.conv2.weight' of shape (64, 64, 3, 3) has 3 NaN or infinite value(s)",
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64])
def test_weights_that_are_not_floating_point_are_refused(dtype, resnet_state, tmp_path, capfd):
    weight = resnet_state["conv1.weight"].astype(dtype)
    _assert_refused(
        tmp_path, capfd, "resnet50", _replaced(resnet_state, "conv1.weight", weight),
        f"key 'conv1.weight' of shape (64, 3, 7, 7) has dtype {weight.dtype}; weights must be "
        "floating point",
    )  # fmt: skip


@pytest.mark.parametrize(
    "kind, tensor, fragment",
    [
        ("sparse", lambda w: w.to_sparse(), "is a sparse_coo tensor"),
        ("meta", lambda w: torch.empty(w.shape, device="meta"), "is a meta tensor"),
        (
            "quantized",
            lambda w: torch.quantize_per_tensor(w, 0.01, 0, torch.qint8),
            "is quantized (torch.qint8)",
        ),
    ],
)
def test_sparse_meta_and_quantized_tensors_are_refused(
    kind, tensor, fragment, resnet_state, tmp_path, capfd
):
    weight = tensor(torch.from_numpy(resnet_state["conv1.weight"]))
    _assert_refused(
        tmp_path, capfd, "resnet50", _replaced(resnet_state, "conv1.weight", weight),
        f"key 'conv1.weight' of shape (64, 3, 7, 7) {fragment}",
    )  # fmt: skip


def test_bfloat16_checkpoints_convert(resnet_state, tmp_path, capfd):
    state = {
        k: torch.from_numpy(v).bfloat16() if v.dtype == np.float32 else torch.from_numpy(v)
        for k, v in resnet_state.items()
    }
    status, _, out = _convert(tmp_path, "resnet50", state)
    assert status == 0, capfd.readouterr().err
    with np.load(out / "backbone.npz") as arrays:
        kernel = arrays["conv1_conv/0"]
    np.testing.assert_array_equal(kernel, conv_kernel(state["conv1.weight"].float().numpy()))


def test_a_conv_weight_of_rank_2_is_refused(resnet_state, tmp_path, capfd):
    weight = resnet_state["conv1.weight"].reshape(64, -1)
    _assert_refused(
        tmp_path, capfd, "resnet50", _replaced(resnet_state, "conv1.weight", weight),
        "key 'conv1.weight' has shape (64, 147); expected 4 dims [out, in, kh, kw]",
    )  # fmt: skip


def test_a_zero_dim_class_score_weight_is_refused(detector_state, tmp_path, capfd):
    key = "roi_heads.box_predictor.cls_score.weight"
    _assert_refused(
        tmp_path, capfd, DETECTOR, _replaced(detector_state, key, np.array(0.5, np.float32)),
        f"key '{key}' has shape (); expected 2 dims [out, in]",
    )  # fmt: skip


def test_a_bias_shorter_than_its_weight_is_refused(detector_state, tmp_path, capfd):
    key = "roi_heads.box_predictor.cls_score.bias"
    _assert_refused(
        tmp_path, capfd, DETECTOR, _replaced(detector_state, key, detector_state[key][:50]),
        f"key '{key}' of shape (50,) does not fit 'roi_heads.box_predictor.cls_score.weight' "
        "of shape (91, 1024) (91 outputs)",
    )  # fmt: skip


def test_rpn_deltas_for_two_anchors_are_refused(detector_state, tmp_path, capfd):
    state = dict(detector_state)
    for name in ("weight", "bias"):
        key = f"rpn.head.bbox_pred.{name}"
        state[key] = state[key][:8]
    _assert_refused(
        tmp_path, capfd, DETECTOR, state,
        "key 'rpn.head.bbox_pred.weight' of shape (8, 256, 1, 1) has 8 outputs but kmask layer",
        "reads 12 of them (up to output 11)",
    )  # fmt: skip


@pytest.mark.parametrize(
    "mean, std, fragment",
    [
        ([103.53, 116.28, 123.675], [0.0, 0.0, 0.0], "key 'pixel_std' is [0.0, 0.0, 0.0]; every "),
        (
            [103.53, 116.28, 123.675, 1.0, 2.0],
            [1.0, 1.0, 1.0],
            "key 'pixel_mean' of shape (5, 1, 1) ",
        ),
    ],
)
def test_detectron2_pixel_statistics_that_do_not_fit_are_refused(
    mean, std, fragment, detector_state, tmp_path, capfd
):
    """detectron2 files may carry their input normalization ([C, 1, 1] arrays)."""
    model = {
        **detectron2_arrays(detector_state),
        "pixel_mean": np.array(mean, np.float32).reshape(-1, 1, 1),
        "pixel_std": np.array(std, np.float32).reshape(-1, 1, 1),
    }
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": model, "__author__": "Detectron2"}))
    out = tmp_path / "run"
    args = ["--input", str(path), "--arch", "faster_rcnn_R_50_FPN_1x", "--out", str(out)]
    assert main(["convert-weights", "--from", "detectron2", *args]) == 2
    err = capfd.readouterr().err
    assert err.splitlines()[-1].startswith(f"kmask convert-weights: error: {path}: {fragment}")
    assert "Traceback" not in err and not out.exists()


def test_an_out_folder_that_cannot_be_written_is_one_line(resnet_state, tmp_path, capfd):
    path = tmp_path / "model.pth"
    torch.save({k: torch.from_numpy(v) for k, v in resnet_state.items()}, path)
    out = tmp_path / ("x" * 300)  # longer than a file name may be
    args = ["--input", str(path), "--arch", "resnet50", "--out", str(out)]
    assert main(["convert-weights", "--from", "torchvision", *args]) == 1
    err = capfd.readouterr().err
    message = err.splitlines()[-1]
    assert message.startswith("kmask convert-weights: error: [Errno 36] File name too long")
    assert "Traceback" not in err
