"""detectron2 .pkl files are read without running code: crafted files are refused by the
global they name before it is called; the files NumPy 1.x and 2.x write still load."""

from __future__ import annotations

import collections
import os
import pickle
import pickletools
import subprocess

import numpy as np
import pytest

from kmask.cli import main
from kmask.convert import ConversionError
from kmask.convert.checkpoint_reader import read_detectron2_pickle


class _Call:
    """An object whose unpickling calls ``function(*args)`` (what an attacker writes)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payload(kind: str, marker) -> _Call:
    """An object that creates the file ``marker`` when unpickled."""
    if kind == "posix.system":  # os.system
        return _Call(os.system, f"touch {marker}")
    if kind == "subprocess.call":
        return _Call(subprocess.call, ["touch", str(marker)])
    return _Call(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()")


def _malicious_pickle(kind: str, nested: bool, marker) -> bytes:
    """A pickle that creates ``marker`` when loaded: the whole file, or one value of a
    model-zoo style ``{"model": {...}, "__author__": ...}``."""
    if kind == "os.system":  # hand-written, as in the pickle security warnings
        call = f"cos\nsystem\n(Vtouch {marker}\ntR".encode()
        return (
            b"(V__author__\nVDetectron2\nVmodel\n(Vconv1.bias\n" + call + b"dd."
            if nested
            else call + b"."
        )
    if not nested:
        return pickle.dumps(_payload(kind, marker), protocol=4)
    model = {
        "conv1.weight": np.ones((2, 3, 1, 1), np.float32),
        "conv1.bias": _payload(kind, marker),
    }
    return pickle.dumps({"model": model, "__author__": "Detectron2"}, protocol=4)


def _convert(path, out) -> list[str]:
    return [
        "convert-weights", "--from", "detectron2", "--input", str(path),
        "--arch", "mask_rcnn_R_50_FPN_3x", "--out", str(out),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["os.system", "posix.system", "subprocess.call", "builtins.eval"])
@pytest.mark.parametrize("nested", [False, True], ids=["top level", "inside the model dict"])
def test_a_pickle_that_calls_a_function_is_refused_before_it_runs(kind, nested, tmp_path, capfd):
    marker = tmp_path / "pwned"
    data = _malicious_pickle(kind, nested, marker)
    path = tmp_path / "model_final.pkl"
    path.write_bytes(data)
    out = tmp_path / "run"

    assert main(_convert(path, out)) == 2
    err = capfd.readouterr().err
    assert err.splitlines()[-1] == (
        f"kmask convert-weights: error: {path}: refused to load global {kind}: a detectron2 "
        ".pkl holds only NumPy arrays and plain containers, and loading this one would call "
        "that function"
    )
    assert "Traceback" not in err
    assert not marker.exists() and not out.exists()
    # The file is live: plain pickle runs its command.
    pickle.loads(data)
    assert marker.exists()


def test_python2_names_of_builtins_are_refused(tmp_path):
    """Protocol 2 writes builtins as Python 2's __builtin__, which is refused too."""
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": _payload("builtins.eval", marker)}}, protocol=2))
    with pytest.raises(ConversionError, match=r"refused to load global __builtin__\.eval"):
        read_detectron2_pickle(path)
    assert not marker.exists()


def _numpy1_style(data: bytes) -> bytes:
    """The pickle as NumPy 1.x writes it: ``numpy.core.*`` where NumPy 2 writes
    ``numpy._core.*`` (and unframed, as the names' lengths change)."""
    ops = list(pickletools.genops(data))
    out = bytearray()
    for (op, arg, start), (_, _, end) in zip(ops, [*ops[1:], (None, None, len(data))]):
        raw = data[start:end]
        if op.name == "FRAME":
            continue
        if isinstance(arg, str) and arg.startswith("numpy._core."):
            new = arg.replace("numpy._core.", "numpy.core.", 1)
            if op.name == "GLOBAL":
                raw = b"c" + new.replace(" ", "\n").encode() + b"\n"
            else:
                assert op.name == "SHORT_BINUNICODE"
                raw = b"\x8c" + bytes([len(new)]) + new.encode()
        out += raw
    return bytes(out)


def _python2_pickle() -> tuple[bytes, np.ndarray]:
    """A protocol-2 pickle as Python 2 and NumPy 1.x wrote the MSRA / Caffe2 files: byte
    strings (decoded as latin-1) and ``numpy.core`` names; and the array it holds."""

    def string(value: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
        return b"U" + bytes([len(value)]) + value

    array = np.arange(6, dtype="<f4").reshape(2, 3)
    minus_one = b"J\xff\xff\xff\xff"
    dtype = (  # dtype("f4", 0, 1) with the state (3, "<", None, None, None, -1, -1, 0)
        b"cnumpy\ndtype\n" + string(b"f4") + b"K\x00K\x01\x87R"
        b"(K\x03" + string(b"<") + b"NNN" + minus_one + minus_one + b"K\x00tb"
    )
    ndarray = (  # _reconstruct(ndarray, (0,), "b") with the state (1, shape, dtype, False, data)
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + string(b"b")
        + b"\x87R(K\x01K\x02K\x03\x86"
        + dtype
        + b"\x89"
        + string(array.tobytes())
        + b"tb"
    )
    data = (
        b"\x80\x02}(" + string(b"blobs") + b"}(" + string(b"conv1_w") + ndarray + b"u"
        + string(b"__author__") + string(b"Ren\xe9") + b"u."
    )  # fmt: skip
    return data, array


@pytest.mark.parametrize("numpy_names", ["numpy 2.x", "numpy 1.x"])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_pickles_of_both_numpy_versions_load(numpy_names, protocol, tmp_path):
    rng = np.random.default_rng(0)
    model = collections.OrderedDict(
        [
            ("conv.weight", rng.normal(size=(4, 3, 1, 1)).astype(np.float32)),
            ("fc.weight", np.asfortranarray(rng.normal(size=(3, 5)))),
            ("norm.bias", rng.normal(size=4).astype(np.float16)),
            ("scale", np.float32(0.5)),
        ]
    )
    checkpoint = {"model": model, "__author__": "Détectron2", "matching_heuristics": True}
    data = pickle.dumps(checkpoint, protocol=protocol)
    if numpy_names == "numpy 1.x":
        data = _numpy1_style(data)
        assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    path = tmp_path / "model_final.pkl"
    path.write_bytes(data)
    arrays = read_detectron2_pickle(path)
    assert list(arrays) == list(model)
    for key, value in model.items():
        assert arrays[key].dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)


def test_python2_caffe2_pickle_loads(tmp_path):
    data, array = _python2_pickle()
    path = tmp_path / "R-50.pkl"
    path.write_bytes(data)
    arrays = read_detectron2_pickle(path)
    assert list(arrays) == ["conv1_w"]
    np.testing.assert_array_equal(arrays["conv1_w"], array)


def test_pth_files_are_not_read_with_a_pytorch_whose_safe_loader_has_holes(
    tmp_path, capfd, monkeypatch
):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1)}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    args = ["--from", "torchvision", "--input", str(path), "--arch", "resnet50"]
    assert main(["convert-weights", *args, "--out", str(tmp_path / "run")]) == 2
    assert capfd.readouterr().err.splitlines()[-1] == (
        f"kmask convert-weights: error: reading {path} safely needs PyTorch 2.10 or newer (this "
        "is 2.5.1, whose torch.load(weights_only=True) a crafted file can make run code: "
        "CVE-2025-32434, CVE-2026-24747): pip install 'kmask[convert]'"
    )
