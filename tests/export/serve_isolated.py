"""Serves an exported SavedModel the way a stock TensorFlow Serving would, without kmask.

Run as ``python -I serve_isolated.py SAVED_MODEL_DIR REQUESTS.json RESULTS.npz`` by the
tests. Importing ``kmask`` is blocked (``-I`` also drops PYTHONPATH and the user site) and
the tests point ``HOME`` and ``KMASK_CACHE_DIR`` at an empty folder, so neither the package
nor its custom-op cache can be reached: only stock TensorFlow and the
``tensorflow-serving-api`` protos run here.

REQUESTS.json: ``{"rest": {case: body}, "grpc": {case: base64 PredictRequest},
"bad": {case: base64 PredictRequest}}``; REST bodies are what a client POSTs to
``/v1/models/NAME:predict`` (row format, binary values as ``{"b64": ...}``).

RESULTS.npz: for each REST and gRPC case ``CASE/OUTPUT`` arrays of the signature's outputs;
for each bad case ``bad/CASE/error`` (the error message, or empty) and
``bad/CASE/num_detections``; ``ops`` (every op type of the graph), ``unregistered`` (those
this stock TensorFlow does not register), ``kmask_op_registered``, ``label_map``.
"""

from __future__ import annotations

import base64
import importlib.abc
import json
import sys


class _BlockKmask(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "kmask" or name.startswith("kmask."):
            raise ImportError(f"{name} must not be importable when serving")
        return None


sys.meta_path.insert(0, _BlockKmask())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow.python.framework import op_def_registry  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402


def rest_inputs(body: dict, input_name: str) -> dict[str, tf.Tensor]:
    """The signature inputs of a REST ``predict`` body in row format (``instances``), as
    TensorFlow Serving decodes it: a list of values of the only input (or of objects keyed
    by input name), ``{"b64": ...}`` values as bytes."""

    def decode(value):
        if isinstance(value, dict) and set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        if isinstance(value, list):
            return [decode(item) for item in value]
        return value

    rows = [
        decode(row[input_name] if isinstance(row, dict) and input_name in row else row)
        for row in body["instances"]
    ]
    return {input_name: tf.constant(rows)}


def grpc_inputs(encoded: str) -> dict[str, tf.Tensor]:
    request = predict_pb2.PredictRequest()
    request.ParseFromString(base64.b64decode(encoded))
    assert request.model_spec.signature_name == "serving_default"
    return {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}


def main(model_dir: str, requests_path: str, results_path: str) -> None:
    assert "kmask" not in sys.modules
    saved_model = saved_model_pb2.SavedModel()
    with open(f"{model_dir}/saved_model.pb", "rb") as file:
        saved_model.ParseFromString(file.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    results = {
        "ops": np.array(sorted(ops)),
        "unregistered": np.array(sorted(op for op in ops if op_def_registry.get(op) is None)),
    }
    loaded = tf.saved_model.load(model_dir)
    results["kmask_op_registered"] = np.array(op_def_registry.get("Kmask>RoiAlign") is not None)
    results["label_map"] = np.array(tf.io.read_file(loaded.label_map.asset_path).numpy())
    serve = loaded.signatures["serving_default"]
    (input_name,) = serve.structured_input_signature[1]
    with open(requests_path) as file:
        requests = json.load(file)
    cases = [(case, rest_inputs(body, input_name)) for case, body in requests["rest"].items()]
    cases += [(case, grpc_inputs(encoded)) for case, encoded in requests["grpc"].items()]
    for case, inputs in cases:
        for key, value in serve(**inputs).items():
            results[f"{case}/{key}"] = value.numpy()
    for case, encoded in requests["bad"].items():
        error, count = "", np.zeros([0], np.int32)
        try:
            count = serve(**grpc_inputs(encoded))["num_detections"].numpy()
        except tf.errors.OpError as exception:
            error = exception.message
        results[f"bad/{case}/error"] = np.array(error)
        results[f"bad/{case}/num_detections"] = count
    np.savez(results_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
