"""SavedModel export: TF Serving layout, served without kmask, same detections as Keras."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from kmask.evaluation import Predictor
from kmask.export import INPUT_TYPES, InferenceGraph, SavedModelExporter, export_saved_model
from kmask.export.saved_model_exporter import (
    WARMUP_PATH,
    non_stock_ops,
    write_warmup_requests,
)
from tests.export.conftest import (
    CATEGORIES,
    assert_same_detections,
    encode,
    export_test_model,
    reference,
    resnet_c4_model,
    shapes_image,
)
from tests.toy_data import tiny_config

SERVE_ISOLATED = Path(__file__).with_name("serve_isolated.py")
# The limits of ``bytes_export``: the test batch (4 images) and its largest image (120x100)
# are exactly at them.
MAX_BATCH_SIZE = 4
MAX_IMAGE_PIXELS = 120 * 100


def predict_request(name: str, values: np.ndarray) -> str:
    """A gRPC ``PredictRequest`` for ``serving_default``, base64 of its serialization."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="kmask", signature_name="serving_default")
    )
    request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return base64.b64encode(request.SerializeToString()).decode()


@pytest.fixture(scope="module")
def bytes_export(model, config, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serving")
    return export_saved_model(
        model,
        base,
        config.data,
        CATEGORIES,
        input_type="image_bytes",
        full_masks=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_image_pixels=MAX_IMAGE_PIXELS,
    )


def claimed_size(data: bytes, height: int, width: int) -> bytes:
    """``data`` (a PNG, or a baseline JPEG) with ``height`` x ``width`` written in its header
    and its pixel data left as it is: a header that only a header reader believes."""
    if data.startswith(b"\x89PNG"):
        return data[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:]
    start = data.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), height, width
    size = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return data[:start] + size + data[start + 4 :]


def test_layout_warmup_and_label_map(bytes_export):
    assert bytes_export.name == "1"
    assert (bytes_export / "saved_model.pb").is_file()
    assert (bytes_export / "variables" / "variables.index").is_file()
    label_map = json.loads((bytes_export / "assets" / "categories.json").read_text())
    assert [c["id"] for c in label_map] == [3, 7, 11]
    assert [p.name for p in bytes_export.parent.iterdir()] == ["1"]  # no staging left
    logs = []
    for record in tf.data.TFRecordDataset(str(bytes_export / WARMUP_PATH)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    assert len(logs) == 2
    for count, log in zip((1, 2), logs):
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        images = tf.make_ndarray(request.inputs["image_bytes"])
        assert images.shape == (count,)
        assert tf.io.decode_png(images[0]).shape[-1] == 3
    assert non_stock_ops(bytes_export) == []


def test_warmup_requests_within_limits(model, config, tmp_path):
    """TensorFlow Serving replays the warm-up requests when it loads the model, and a
    refused one fails the load: they stay within the export's limits."""
    graph = InferenceGraph(model, config.data, CATEGORIES, max_batch_size=1, max_image_pixels=999)
    for input_type in INPUT_TYPES:
        write_warmup_requests(tmp_path / input_type, input_type, graph)
        batches = []
        for record in tf.data.TFRecordDataset(str(tmp_path / input_type)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            batches.append(tf.make_ndarray(log.predict_log.request.inputs[input_type]))
        assert len(batches) == (2 if input_type == "image_tensor" else 1)
        for batch in batches:
            assert len(batch) == 1
            image = batch[0]
            if input_type == "tf_example":
                feature = tf.train.Example.FromString(image).features.feature["image/encoded"]
                image = feature.bytes_list.value[0]
            if input_type != "image_tensor":
                image = tf.io.decode_png(image).numpy()
            assert 0 < image.shape[0] * image.shape[1] <= 999


def test_served_without_kmask_matches_keras(
    bytes_export, model, config, encoded_images, decoded_images, tmp_path
):
    """REST (instances with b64) and gRPC (PredictRequest) requests, built as TF Serving's
    docs specify, through the SavedModel loaded by stock TensorFlow in ``python -I`` with
    kmask blocked and the custom-op cache unreachable. Images that do not decode get
    ``decode_ok`` False and zero detections while their batch mates are answered; empty
    requests and requests over a limit are refused with a message naming it."""
    rest = {
        "batch": {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(data).decode()} for data in encoded_images],
        }
    }
    one_pixel = encode(shapes_image(1, 1, seed=0), "PNG")
    first, second = encoded_images[:2]  # a PNG and a JPEG
    undecodable = [
        first[: len(first) // 2],  # truncated PNG
        second[: len(second) // 2],  # truncated JPEG
        b"hello, server",
        encode(decoded_images[0], "GIF"),  # GIF decodes every frame: refused
    ]
    requests = {
        "rest": rest,
        "grpc": {
            "single": predict_request("image_bytes", np.array(encoded_images[1:2], object)),
            "mixed": predict_request(
                "image_bytes", np.array([first, *undecodable[:2], second], object)
            ),
            "undecodable": predict_request("image_bytes", np.array(undecodable, object)),
        },
        "bad": {
            "empty_batch": predict_request("image_bytes", np.zeros([0], object)),
            "one_pixel": predict_request("image_bytes", np.array([one_pixel], object)),
            "over_batch": predict_request("image_bytes", np.array([one_pixel] * 5, object)),
            # Headers that claim more pixels than the data holds: refused from the header.
            "over_pixels": predict_request(
                "image_bytes", np.array([one_pixel, claimed_size(second, 10_000, 10_000)], object)
            ),
            "over_by_one": predict_request(
                "image_bytes", np.array([claimed_size(first, 1, MAX_IMAGE_PIXELS + 1)], object)
            ),
            "over_int32": predict_request(
                "image_bytes",
                np.array([one_pixel, one_pixel, claimed_size(first, 100_000, 100_000)], object),
            ),
        },
    }
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(empty_home),
        "KMASK_CACHE_DIR": str(empty_home / "no-cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        [sys.executable, "-I", str(SERVE_ISOLATED), str(bytes_export), "requests.json", "out.npz"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    served = dict(np.load(tmp_path / "out.npz"))

    assert served["unregistered"].size == 0
    assert not served["kmask_op_registered"]
    assert "RoiAlign" not in " ".join(served["ops"])
    assert json.loads(served["label_map"].item()) == json.loads(CATEGORIES.to_json())

    batch = {
        key.split("/", 1)[1]: value for key, value in served.items() if key.startswith("batch/")
    }
    # Each image of the mixed-size request (PNG and JPEG, 4 sizes) against the same image
    # alone through kmask's own path: batch mates and the decoder change nothing.
    want = [reference(model, config, [image])[0] for image in decoded_images]
    assert sum(len(w["scores"]) for w in want) > 0
    assert len({c for w in want for c in w["classes"]}) > 1  # classes vary
    for index, expected in enumerate(want):
        assert_same_detections(batch, index, expected, full_masks=True)
        np.testing.assert_array_equal(
            batch["original_size"][index], decoded_images[index].shape[:2]
        )

    single = {key.split("/", 1)[1]: v for key, v in served.items() if key.startswith("single/")}
    assert_same_detections(single, 0, reference(model, config, decoded_images[1:2])[0], True)

    np.testing.assert_array_equal(batch["decode_ok"], [True] * 4)
    mixed = {key.split("/", 1)[1]: v for key, v in served.items() if key.startswith("mixed/")}
    np.testing.assert_array_equal(mixed["decode_ok"], [True, False, False, True])
    for index, expected in zip((0, 3), reference(model, config, decoded_images[:2])):
        assert_same_detections(mixed, index, expected, full_masks=True)
    for index in (1, 2):
        assert mixed["num_detections"][index] == 0
        assert not mixed["detection_boxes"][index].any()
        assert not mixed["detection_full_masks"][index].any()
        assert np.all(mixed["detection_classes"][index] == -1)
        np.testing.assert_array_equal(mixed["original_size"][index], [0, 0])
    assert not served["undecodable/decode_ok"].any()
    assert not served["undecodable/num_detections"].any()

    assert "empty batch" in served["bad/empty_batch/error"].item()
    assert served["bad/one_pixel/error"].item() == ""
    assert served["bad/one_pixel/num_detections"].shape == (1,)
    assert (
        "image_bytes: 5 images in one request, over the limit max_batch_size=4"
        in served["bad/over_batch/error"].item()
    )
    limit = "pixels, over the limit max_image_pixels=12000 set at export"
    for case, message in (
        ("over_pixels", "image_bytes[1] is 10000x10000 = 100000000"),
        ("over_by_one", "image_bytes[0] is 1x12001 = 12001"),
        ("over_int32", "image_bytes[2] is 100000x100000 = 10000000000"),
    ):
        assert f"{message} {limit}" in served[f"bad/{case}/error"].item(), case


def test_tf_example_input(model, config, decoded_images, encoded_images, tmp_path):
    """Serialized ``tf.train.Example`` in; one that does not parse, lacks ``image/encoded``
    or holds no image gets ``decode_ok`` False while the others are answered."""
    path = export_saved_model(model, tmp_path, config.data, CATEGORIES, input_type="tf_example")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def example(key: str, data: bytes) -> bytes:
        feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
        return tf.train.Example(
            features=tf.train.Features(feature={key: feature})
        ).SerializeToString()

    examples = [example("image/encoded", d) for d in encoded_images]
    bad = [b"\xffnot an Example", example("image/other", encoded_images[0])]
    bad.append(example("image/encoded", b"no image"))
    got = {k: v.numpy() for k, v in serve(tf_example=tf.constant(examples + bad)).items()}
    np.testing.assert_array_equal(got["decode_ok"], [True] * 4 + [False] * 3)
    for index, expected in enumerate(reference(model, config, [i])[0] for i in decoded_images):
        assert_same_detections(got, index, expected)
    assert not got["num_detections"][4:].any()


def test_versions_overwrite_interruption_and_image_tensor(
    model, config, decoded_images, tmp_path, monkeypatch
):
    """Versions and atomic replacement; ``image_tensor`` batches within the limits are
    answered, and over them refused with a message naming the limit."""
    height, width = decoded_images[1].shape[:2]  # 50x90: at the pixel limit
    exporter = SavedModelExporter(
        model, config.data, CATEGORIES, max_batch_size=2, max_image_pixels=height * width
    )
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "marker").write_text("old")
    with pytest.raises(FileExistsError, match=str(tmp_path / "1")):
        exporter.export(tmp_path, version=1)
    for bad in (0, -2, True, "3"):
        with pytest.raises(ValueError, match="version"):
            exporter.export(tmp_path, version=bad)
    with pytest.raises(ValueError, match="input_type"):
        exporter.export(tmp_path, input_type="jpeg")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tf.saved_model, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            exporter.export(tmp_path)  # would be version 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]

    path = exporter.export(tmp_path, version=1, overwrite=True, input_type="image_tensor")
    assert path == tmp_path / "1" and not (path / "marker").exists()
    assert (path / "saved_model.pb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    for image in decoded_images[:2]:  # one size per image_tensor batch
        got = {k: v.numpy() for k, v in serve(image_tensor=tf.constant(image[None])).items()}
        assert_same_detections(got, 0, reference(model, config, [image])[0])
        assert "decode_ok" not in got
    pair = np.stack([decoded_images[1]] * 2)
    got = {k: v.numpy() for k, v in serve(image_tensor=tf.constant(pair)).items()}
    assert_same_detections(got, 1, reference(model, config, [pair[1]])[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 images .* max_batch_size=2"):
        serve(image_tensor=tf.constant(np.concatenate([pair, pair[:1]])))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"image_tensor\[0\] is 50x91 = 4550 pixels, over the limit max_image_pixels=4500",
    ):
        serve(image_tensor=tf.zeros([1, 50, 91, 3], tf.uint8))


def test_keypoints_in_source_pixels(images, tmp_path):
    """A Keypoint R-CNN exports ``detection_keypoints`` (x, y, score) in source-image pixels,
    equal to ``Predictor``'s."""
    config = tiny_config(
        tmp_path / "unused",
        "data.min_size=[64]",
        "data.max_size=96",
        "model.keypoint_head={num_keypoints: 4, num_conv: 1, conv_dim: 16}",
    )
    model = export_test_model(config, seed=3)
    image = images[3]  # 120x100, resized down
    path = export_saved_model(model, tmp_path / "export", config.data, CATEGORIES, "image_tensor")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = {k: v.numpy() for k, v in serve(image_tensor=tf.constant(image[None])).items()}
    predictor = Predictor(model, config.data)
    want = predictor.image_detections(
        predictor.predict_batch(predictor.features_for_image(image)), 0
    )
    count = int(got["num_detections"][0])
    assert count == len(want["scores"]) > 0
    keypoints = got["detection_keypoints"][0]
    assert keypoints.shape[1:] == (4, 3)
    np.testing.assert_allclose(keypoints[:count, :, :2], want["keypoints"][..., :2], atol=0.5)
    np.testing.assert_allclose(keypoints[:count, :, 2], want["keypoints"][..., 2], atol=1e-4)
    assert not keypoints[count:].any()


def test_resnet_c4_model(images, tmp_path):
    """A ResNet-C4 Mask R-CNN (no FPN, conv5 per RoI, 14x14 masks) exports with stock ops
    and serves the Keras model's detections."""
    model, config = resnet_c4_model(tmp_path)
    path = export_saved_model(model, tmp_path / "export", config.data, CATEGORIES, "image_tensor")
    assert not non_stock_ops(path)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = {k: v.numpy() for k, v in serve(image_tensor=tf.constant(images[3][None])).items()}
    want = reference(model, config, [images[3]])[0]
    assert got["detection_masks"].shape[-2:] == (14, 14) and len(want["scores"]) > 0
    assert_same_detections(got, 0, want)


def test_bfloat16_export_runs_in_stock_tensorflow(model, config, decoded_images, tmp_path):
    """A model built in bfloat16 (``--precision bfloat16``) exports a SavedModel whose
    convolutions run in bfloat16 in stock TensorFlow, and which serves what the same
    bfloat16 model gives through ``Predictor``; its boxes stay float32."""
    from kmask.modeling.factory import build_inference_model

    bfloat16 = build_inference_model(config.model, "bfloat16")
    bfloat16.set_weights(model.get_weights())
    path = export_saved_model(bfloat16, tmp_path, config.data, CATEGORIES, "image_tensor")
    served = tf.saved_model.load(str(path))
    serve = served.signatures["serving_default"]
    graph = serve.graph.as_graph_def()
    conv_types = {
        node.attr["T"].type
        for function in graph.library.function
        for node in function.node_def
        if node.op == "Conv2D"
    }
    assert conv_types == {tf.bfloat16.as_datatype_enum}
    image = decoded_images[2]
    got = {k: v.numpy() for k, v in serve(image_tensor=tf.constant(image[None])).items()}
    assert got["detection_boxes"].dtype == np.float32
    assert_same_detections(got, 0, reference(bfloat16, config, [image])[0])
