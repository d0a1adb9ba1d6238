"""Runs an exported TFLite model with the LiteRT interpreter in a process without TensorFlow
or kmask.

``python -I run_litert.py MODEL.tflite INPUTS.npz RESULTS.npz [REPEATS]``: for every array
``NAME`` of INPUTS.npz (uint8 ``[B, H, W, 3]``), each image is run alone (the model's batch
is 1) through the ``serving_default`` signature, and RESULTS.npz gets ``NAME/OUTPUT`` for
each output, the images' results concatenated on the batch axis; with REPEATS > 0 also
``NAME/seconds``, the median wall time per image of REPEATS runs of the first image after
one warm-up run. ``ops`` holds the model's operator names, read from its flatbuffer with
LiteRT's own schema (``CUSTOM:<code>`` for a custom or Flex op).
"""

from __future__ import annotations

import importlib.abc
import sys
import time


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "kmask", "keras", "tf_keras"):
            raise ImportError(f"{name} must not be importable next to LiteRT")
        return None


sys.meta_path.insert(0, _Block())

import numpy as np  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402


def operator_names(data: bytes) -> list[str]:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    model = schema.Model.GetRootAs(data, 0)
    ops = set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            ops.add(names[builtin])
    return sorted(ops)


def main(model_path: str, inputs_path: str, results_path: str, repeats: str = "0") -> None:
    with open(model_path, "rb") as file:
        data = file.read()
    runner = Interpreter(model_content=data).get_signature_runner("serving_default")
    results = {"ops": np.array(operator_names(data))}
    for key, images in np.load(inputs_path).items():
        outputs = [runner(image_tensor=image[None]) for image in images]
        for name in outputs[0]:
            results[f"{key}/{name}"] = np.concatenate([output[name] for output in outputs])
        if int(repeats) > 0:
            times = []
            for _ in range(int(repeats)):
                start = time.perf_counter()
                runner(image_tensor=images[:1])
                times.append(time.perf_counter() - start)
            results[f"{key}/seconds"] = np.median(times)
    assert not {"tensorflow", "kmask", "keras"} & set(sys.modules)
    np.savez(results_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
