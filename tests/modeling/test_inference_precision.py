"""Inference precision: what ``auto`` picks and why, the model each precision builds (float32
weights, bfloat16 compute, float32 boxes and outputs), and a converted torchvision Mask
R-CNN's detections in bfloat16 against float32."""

import numpy as np
import pytest

from kmask.config import load_config
from kmask.modeling import inference_precision
from kmask.modeling.factory import build_inference_model
from kmask.modeling.inference_precision import InferencePrecision


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(inference_precision.tf.config, "list_physical_devices", lambda kind: [])


@pytest.mark.parametrize(
    ("flags", "onednn", "name", "reason"),
    [
        ({"amx_bf16", "avx512f"}, "1", "bfloat16", "the CPU has AMX-BF16 and oneDNN is on"),
        ({"avx512_bf16"}, None, "bfloat16", "the CPU has AVX512-BF16 and oneDNN is on"),
        ({"amx_bf16"}, "0", "float32", "but oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0)"),
        ({"avx2", "fma", "avx512f"}, "1", "float32", "neither AMX-BF16 nor AVX512-BF16"),
        (set(), None, "float32", "neither AMX-BF16 nor AVX512-BF16"),
    ],
)  # fmt: skip
def test_auto_picks_bfloat16_only_where_it_is_native_and_fast(
    no_gpu, monkeypatch, flags, onednn, name, reason
):
    monkeypatch.setattr(inference_precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(inference_precision, "onednn_enabled", lambda: onednn != "0")
    if onednn is not None:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    picked = InferencePrecision.resolve("auto")
    assert picked.name == name and reason in picked.reason


def test_auto_on_a_gpu_reads_its_compute_capability(monkeypatch):
    gpu = object()
    tf = inference_precision.tf
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [gpu])
    for capability, name in (((8, 0), "bfloat16"), ((7, 5), "float32")):
        details = {"device_name": "Test GPU", "compute_capability": capability}
        monkeypatch.setattr(
            tf.config.experimental, "get_device_details", lambda d, details=details: details
        )
        picked = InferencePrecision.auto()
        assert picked.name == name and f"compute capability {capability[0]}." in picked.reason


def test_this_machines_cpu_flags_are_read():
    flags = inference_precision.cpu_flags()
    with open("/proc/cpuinfo") as cpuinfo:
        text = cpuinfo.read()
    assert ("sse2" in flags) == (" sse2 " in text.replace("\n", " "))


def test_explicit_and_unknown_precisions(monkeypatch):
    assert InferencePrecision.resolve("bfloat16").policy == "mixed_bfloat16"
    assert InferencePrecision.resolve("float32").policy == "float32"
    tf = inference_precision.tf
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])
    with pytest.raises(ValueError, match="precision float16 needs a GPU"):
        InferencePrecision.resolve("float16")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["GPU:0"])
    assert InferencePrecision.resolve("float16").policy == "mixed_float16"
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        InferencePrecision.resolve("bf16")


def test_bfloat16_model_computes_in_bfloat16_and_keeps_float32_weights_and_outputs():
    import tensorflow as tf

    config = load_config("shapes_tiny", ["model.roi_align_implementation=tf"]).model
    reference = build_inference_model(config, "float32")
    model = build_inference_model(config, "bfloat16")
    model.set_weights(reference.get_weights())  # a float32 checkpoint loads as it is
    assert {v.dtype for v in model.weights} == {"float32"}
    convs = [layer for layer in model._flatten_layers() if "conv" in type(layer).__name__.lower()]
    assert convs and {layer.compute_dtype for layer in convs} == {"bfloat16"}
    rng = np.random.default_rng(0)
    features = {
        "images": tf.constant(rng.uniform(0, 255, (1, 128, 128, 3)), tf.float32),
        "image_size": tf.constant([[128, 128]], tf.int32),
    }
    want = reference.predict_step(features)
    got = model.predict_step(features)
    for key in ("proposals", "detection_boxes", "detection_scores", "detection_masks"):
        assert got[key].dtype == tf.float32, key
    # The RPN's best proposals of bfloat16 lie where float32's do (its objectness logits
    # differ by bfloat16 rounding, so the order of near-equal scores may change).
    top = want["proposals"][0, :20].numpy()
    nearest = np.abs(got["proposals"][0].numpy()[None] - top[:, None]).max(-1).min(-1)
    assert np.median(nearest) < 1.0, nearest
