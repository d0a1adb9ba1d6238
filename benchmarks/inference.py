"""CPU inference benchmark of ResNet-50-FPN Mask R-CNN (80 classes, random weights).

For each image size, batch size and precision it prints: the first ``predict_on_batch``
call (tracing the predict function plus one run), the median seconds per image over
``--repeats`` runs after a warm-up (the median seconds of a batch call over the batch
size), the peak resident memory of the process, the model's FLOPs per image, the achieved
GFLOP/s, the roofline of a plain ``tf.matmul`` in the same precision measured in the same
process, and the fraction of that roofline the model reaches.

The precisions are those of ``kmask predict --precision``: ``float32``, ``bfloat16`` and
``float16``, each model built by ``kmask.modeling.factory.build_inference_model`` (Keras
policy ``float32``, ``mixed_bfloat16`` or ``mixed_float16``; float32 weights). The
roofline is the best of a 2048^2 and a 4096^2 ``tf.matmul`` of that precision's compute
dtype (float32, bfloat16, float16), each the best of 5 runs: the smaller one under-reports
where the larger one keeps the matrix units busier.

FLOPs are 2 x the multiply-accumulates of every convolution, transposed convolution and
fully connected layer, recorded with the shapes of one real inference of one image (the
RPN, box head on 1000 proposals, mask head on 100 detections: static counts, so the FLOPs
per image do not depend on the batch size); RoIAlign, NMS and elementwise ops are not
counted.

bfloat16 is fast on a CPU only through oneDNN (TensorFlow's default on x86-64 Linux; off
with ``TF_ENABLE_ONEDNN_OPTS=0``, under which TensorFlow's bfloat16 kernels are slower
than float32). Every case prints whether oneDNN was on in its process; the script never
changes ``TF_ENABLE_ONEDNN_OPTS``.

Each (size, batch, precision) case runs in a fresh process so that trace time and peak
memory are its own. Usage::

    python benchmarks/inference.py                       # float32 and bfloat16, batch 1 and 8
    python benchmarks/inference.py --precision float32 bfloat16 float16 --batch 1 \\
        --sizes 1024x1024 --repeats 5

The issue 23 target is printed at the end: bfloat16 at 1024x1024 batch 1 reaching at
least half of the bfloat16 ``tf.matmul`` roofline. ``mixed_bfloat16`` and
``mixed_float16`` are accepted as older names of ``bfloat16`` and ``float16``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

PRECISIONS = ("float32", "bfloat16", "float16")
# Older --precision names (Keras policy names) of this script.
_POLICY_NAMES = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
MATMUL_SIDES = (2048, 4096)
TARGET_FRACTION = 0.5  # issue 23: bfloat16 at 1024x1024 batch 1 vs the bf16 matmul roofline


def _matmul_gflops(dtype: str, n: int) -> float:
    """GFLOP/s of a square ``n x n`` ``tf.matmul`` (best of 5) in ``dtype``."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([n, n], dtype=tf.float32), dtype)
    b = tf.cast(tf.random.normal([n, n], dtype=tf.float32), dtype)
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _count_flops(model: Any, features: dict[str, Any]) -> float:
    """FLOPs of the convolutions and fc layers of one eager inference."""
    import keras

    macs = []
    originals = {}

    def wrap(cls: type, kind: str) -> None:
        original = cls.call
        originals[cls] = original

        def call(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            outputs = original(self, inputs, *args, **kwargs)
            in_shape, out_shape = tuple(inputs.shape), tuple(outputs.shape)
            if kind == "dense":
                rows = 1
                for size in in_shape[:-1]:
                    rows *= size
                macs.append(rows * in_shape[-1] * out_shape[-1])
            else:
                kh, kw = self.kernel_size
                spatial = in_shape if kind == "deconv" else out_shape
                positions = spatial[0] * spatial[1] * spatial[2]
                macs.append(positions * kh * kw * in_shape[-1] * out_shape[-1])
            return outputs

        cls.call = call

    wrap(keras.layers.Conv2D, "conv")
    wrap(keras.layers.Conv2DTranspose, "deconv")
    wrap(keras.layers.Dense, "dense")
    try:
        model(features, training=False)
    finally:
        for cls, original in originals.items():
            cls.call = original
    return 2.0 * sum(macs)


def onednn_state() -> str:
    """``on`` or ``off``: whether this process's TensorFlow runs its oneDNN kernels (as
    TensorFlow decided at import from ``TF_ENABLE_ONEDNN_OPTS``), and the variable."""
    from tensorflow.python.util import _pywrap_util_port

    state = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    return f"{state} (TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})"


def run_case(height: int, width: int, batch: int, precision: str, repeats: int) -> dict[str, Any]:
    """Measures one (size, batch, precision) case in this process."""
    import keras
    import numpy as np
    import tensorflow as tf

    from kmask.config import ModelConfig
    from kmask.modeling.factory import build_inference_model

    keras.utils.set_random_seed(0)
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    rng = np.random.default_rng(0)
    images = np.zeros((batch, *padded, 3), np.float32)
    images[:, :height, :width] = rng.uniform(0, 255, (batch, height, width, 3))
    features = {
        "images": tf.constant(images),
        "image_size": tf.constant([[height, width]] * batch, tf.int32),
    }
    start = time.perf_counter()
    model = build_inference_model(ModelConfig(num_classes=80), precision)
    build_s = time.perf_counter() - start

    start = time.perf_counter()
    outputs = model.predict_on_batch(features)
    first_call_s = time.perf_counter() - start
    assert outputs["detection_masks"].shape == (batch, 100, 28, 28)
    model.predict_on_batch(features)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(features)
        times.append(time.perf_counter() - start)
    one_image = {key: value[:1] for key, value in features.items()}
    flops = _count_flops(model, one_image)
    median_s = statistics.median(times) / batch
    matmul = {str(n): _matmul_gflops(precision, n) for n in MATMUL_SIDES}
    roofline = max(matmul.values())
    achieved = flops / 1e9 / median_s
    return {
        "size": f"{height}x{width}",
        "padded": f"{padded[0]}x{padded[1]}",
        "batch": batch,
        "precision": precision,
        "policy": model.dtype_policy.name,
        "onednn": onednn_state(),
        "build_s": build_s,
        "first_call_s": first_call_s,
        "median_s_per_image": median_s,
        "runs_s": times,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "gflops_per_image": flops / 1e9,
        "achieved_gflops_per_s": achieved,
        "matmul_gflops_per_s": matmul,
        "roofline_gflops_per_s": roofline,
        "roofline_fraction": achieved / roofline,
        "matmul_dtype": precision,
    }


def _precision(name: str) -> str:
    name = _POLICY_NAMES.get(name, name)
    if name not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["1024x1024", "800x1333"],
        help="HEIGHTxWIDTH of the valid image (padded to a multiple of 32)",
    )
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="images per call")
    parser.add_argument(
        "--precision",
        nargs="+",
        type=_precision,
        default=["float32", "bfloat16"],
        help=f"any of {', '.join(PRECISIONS)}",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after a warm-up")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args(argv)
    if args.case:
        size, batch, precision = args.case.split(",")
        height, width = (int(v) for v in size.split("x"))
        result = run_case(height, width, int(batch), precision, args.repeats)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import platform

    print(
        f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()}, "
        f"Python {platform.python_version()}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}, "
        f"{args.repeats} timed runs per case"
    )
    header = (
        f"{'size':>10} {'batch':>5} {'precision':>9} {'first call s':>12} {'median s/img':>12} "
        f"{'peak GiB':>8} {'GFLOPs/img':>10} {'GFLOP/s':>8} {'roofline GFLOP/s':>16} "
        f"{'of roofline':>11}"
    )
    print(header)
    results = []
    for size in args.sizes:
        for batch in args.batch:
            for precision in args.precision:
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
                command = [sys.executable, __file__, "--case", f"{size},{batch},{precision}"]
                result = subprocess.run(
                    [*command, "--repeats", str(args.repeats)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
                if result.returncode != 0 or not lines:
                    print(f"{size:>10} {batch:>5} {precision:>9} FAILED\n{result.stderr[-2000:]}")
                    continue
                r = json.loads(lines[-1][len("RESULT ") :])
                results.append(r)
                print(
                    f"{r['size']:>10} {r['batch']:>5} {r['precision']:>9} "
                    f"{r['first_call_s']:12.1f} {r['median_s_per_image']:12.3f} "
                    f"{r['peak_rss_gib']:8.2f} {r['gflops_per_image']:10.0f} "
                    f"{r['achieved_gflops_per_s']:8.0f} {r['roofline_gflops_per_s']:16.0f} "
                    f"{100 * r['roofline_fraction']:10.1f}%"
                )
                matmuls = ", ".join(
                    f"{n}^2 {gflops:.0f}" for n, gflops in r["matmul_gflops_per_s"].items()
                )
                print(
                    f"{'':>10} runs (s per call): {', '.join(f'{t:.2f}' for t in r['runs_s'])}; "
                    f"build {r['build_s']:.1f} s; policy {r['policy']}; "
                    f"matmul {r['matmul_dtype']} GFLOP/s: {matmuls}; oneDNN {r['onednn']}",
                    flush=True,
                )
    for r in results:
        if (r["size"], r["batch"], r["precision"]) == ("1024x1024", 1, "bfloat16"):
            verdict = "met" if r["roofline_fraction"] >= TARGET_FRACTION else "NOT met"
            print(
                f"issue 23 target: bfloat16 1024x1024 batch 1 reaches "
                f"{100 * r['roofline_fraction']:.1f}% of the bfloat16 matmul roofline "
                f"({r['achieved_gflops_per_s']:.0f} of {r['roofline_gflops_per_s']:.0f} "
                f"GFLOP/s; target >= {100 * TARGET_FRACTION:.0f}%): {verdict}"
            )
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
