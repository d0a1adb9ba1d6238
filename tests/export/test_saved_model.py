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
from kmask.export import SavedModelExporter, export_saved_model
from kmask.export.saved_model_exporter import WARMUP_PATH, non_stock_ops
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
        model, base, config.data, CATEGORIES, input_type="image_bytes", full_masks=True
    )


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


def test_served_without_kmask_matches_keras(
    bytes_export, model, config, encoded_images, decoded_images, tmp_path
):
    """REST (instances with b64) and gRPC (PredictRequest) requests, built as TF Serving's
    docs specify, through the SavedModel loaded by stock TensorFlow in ``python -I`` with
    kmask blocked and the custom-op cache unreachable; bad inputs answer with an error or
    zero detections."""
    rest = {
        "batch": {
            "signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(data).decode()} for data in encoded_images],
        }
    }
    one_pixel = encode(shapes_image(1, 1, seed=0), "PNG")
    requests = {
        "rest": rest,
        "grpc": {"single": predict_request("image_bytes", np.array(encoded_images[1:2], object))},
        "bad": {
            "corrupt": predict_request(
                "image_bytes", np.array([encoded_images[0][: len(encoded_images[0]) // 2]], object)
            ),
            "not_an_image": predict_request("image_bytes", np.array([b"hello, server"], object)),
            "empty_batch": predict_request("image_bytes", np.zeros([0], object)),
            "one_pixel": predict_request("image_bytes", np.array([one_pixel], object)),
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
    want = reference(model, config, decoded_images)
    assert sum(len(w["scores"]) for w in want) > 0
    assert len({c for w in want for c in w["classes"]}) > 1  # classes vary
    for index, expected in enumerate(want):
        assert_same_detections(batch, index, expected, full_masks=True)
        np.testing.assert_array_equal(
            batch["original_size"][index], decoded_images[index].shape[:2]
        )

    single = {key.split("/", 1)[1]: v for key, v in served.items() if key.startswith("single/")}
    assert_same_detections(single, 0, reference(model, config, decoded_images[1:2])[0], True)

    for case in ("corrupt", "not_an_image", "empty_batch"):
        assert served[f"bad/{case}/error"].item(), case
    assert "empty batch" in served["bad/empty_batch/error"].item()
    assert served["bad/one_pixel/error"].item() == ""
    assert served["bad/one_pixel/num_detections"].shape == (1,)


def test_tf_example_input(model, config, decoded_images, encoded_images, tmp_path):
    path = export_saved_model(model, tmp_path, config.data, CATEGORIES, input_type="tf_example")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[d]))
                }
            )
        ).SerializeToString()
        for d in encoded_images
    ]
    got = {k: v.numpy() for k, v in serve(tf_example=tf.constant(examples)).items()}
    for index, expected in enumerate(reference(model, config, decoded_images)):
        assert_same_detections(got, index, expected)


def test_versions_overwrite_interruption_and_image_tensor(
    model, config, decoded_images, tmp_path, monkeypatch
):
    exporter = SavedModelExporter(model, config.data, CATEGORIES)
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
