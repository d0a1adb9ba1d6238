"""Runs an exported ONNX model with ONNX Runtime in a process without TensorFlow or kmask.

``python -I run_onnxruntime.py MODEL.onnx INPUTS.npz RESULTS.npz [REPEATS]``: for every
array ``NAME`` of INPUTS.npz (uint8 ``[B, H, W, 3]``), RESULTS.npz gets ``NAME/OUTPUT``
for each model output; with REPEATS > 0 also ``NAME/seconds``, the median wall time of
REPEATS runs after one warm-up run.
"""

from __future__ import annotations

import importlib.abc
import sys
import time


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "kmask", "keras", "tf2onnx"):
            raise ImportError(f"{name} must not be importable next to ONNX Runtime")
        return None


sys.meta_path.insert(0, _Block())

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402


def main(model_path: str, inputs_path: str, results_path: str, repeats: str = "0") -> None:
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    names = [output.name for output in session.get_outputs()]
    results = {}
    for key, images in np.load(inputs_path).items():
        outputs = session.run(None, {model_input.name: images})
        results.update({f"{key}/{name}": value for name, value in zip(names, outputs)})
        if int(repeats) > 0:
            times = []
            for _ in range(int(repeats)):
                start = time.perf_counter()
                session.run(None, {model_input.name: images})
                times.append(time.perf_counter() - start)
            results[f"{key}/seconds"] = np.median(times)
    assert "tensorflow" not in sys.modules
    np.savez(results_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
