"""CPU inference benchmark of ResNet-50-FPN Mask R-CNN (80 classes, random weights).

For each image size (batch 1) it prints: the first ``predict_on_batch`` call (tracing the
predict function plus one run), the median seconds per image over 5 runs after a warm-up,
the peak resident memory of the process, the model's FLOPs and the achieved GFLOP/s next
to a plain ``tf.matmul`` peak measured in the same run.

FLOPs are 2 x the multiply-accumulates of every convolution, transposed convolution and
fully connected layer, recorded with the shapes of one real inference (the RPN, box head
on 1000 proposals, mask head on 100 detections); RoIAlign, NMS and elementwise ops are
not counted.

Each (size, precision) case runs in a fresh process so that trace time and peak memory
are its own. Usage::

    python benchmarks/inference.py                       # float32 and mixed_bfloat16
    python benchmarks/inference.py --precision float32 --sizes 1024x1024
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

REPEATS = 5


def _matmul_peak(dtype: str, n: int = 2048) -> float:
    """GFLOP/s of a square ``tf.matmul`` (best of 5) in ``dtype``."""
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
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


def run_case(height: int, width: int, precision: str) -> dict[str, Any]:
    """Measures one (size, precision) case in this process."""
    import keras
    import numpy as np
    import tensorflow as tf

    from kmask.config import ModelConfig
    from kmask.modeling import build_mask_rcnn

    if precision != "float32":
        keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    rng = np.random.default_rng(0)
    image = np.zeros((1, *padded, 3), np.float32)
    image[0, :height, :width] = rng.uniform(0, 255, (height, width, 3))
    features = {
        "images": tf.constant(image),
        "image_size": tf.constant([[height, width]], tf.int32),
    }
    start = time.perf_counter()
    model = build_mask_rcnn(ModelConfig(num_classes=80))
    model.build({"images": (None, None, None, 3)})
    build_s = time.perf_counter() - start

    start = time.perf_counter()
    outputs = model.predict_on_batch(features)
    first_call_s = time.perf_counter() - start
    assert outputs["detection_masks"].shape == (1, 100, 28, 28)
    model.predict_on_batch(features)  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        model.predict_on_batch(features)
        times.append(time.perf_counter() - start)
    flops = _count_flops(model, features)
    median_s = statistics.median(times)
    matmul_dtype = (
        "bfloat16"
        if precision == "mixed_bfloat16"
        else ("float16" if precision == "mixed_float16" else "float32")
    )
    return {
        "size": f"{height}x{width}",
        "padded": f"{padded[0]}x{padded[1]}",
        "precision": precision,
        "build_s": build_s,
        "first_call_s": first_call_s,
        "median_s": median_s,
        "runs_s": times,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "gflops": flops / 1e9,
        "achieved_gflops_per_s": flops / 1e9 / median_s,
        "matmul_peak_gflops_per_s": _matmul_peak(matmul_dtype),
        "matmul_dtype": matmul_dtype,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["1024x1024", "800x1333"],
        help="HEIGHTxWIDTH of the valid image (padded to a multiple of 32)",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["float32", "mixed_bfloat16"],
        choices=["float32", "mixed_bfloat16", "mixed_float16"],
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args(argv)
    if args.case:
        size, precision = args.case.split(",")
        height, width = (int(v) for v in size.split("x"))
        print("RESULT " + json.dumps(run_case(height, width, precision)), flush=True)
        return 0

    import platform

    print(
        f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()}, "
        f"Python {platform.python_version()}"
    )
    header = (
        f"{'size':>10} {'precision':>15} {'first call s':>12} {'median s/img':>12} "
        f"{'peak GiB':>8} {'GFLOPs':>7} {'GFLOP/s':>8} {'matmul GFLOP/s':>15}"
    )
    print(header)
    for size in args.sizes:
        for precision in args.precision:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            result = subprocess.run(
                [sys.executable, __file__, "--case", f"{size},{precision}"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
            if result.returncode != 0 or not lines:
                print(f"{size:>10} {precision:>15} FAILED\n{result.stderr[-2000:]}")
                continue
            r = json.loads(lines[-1][len("RESULT ") :])
            print(
                f"{r['size']:>10} {r['precision']:>15} {r['first_call_s']:12.1f} "
                f"{r['median_s']:12.2f} {r['peak_rss_gib']:8.2f} {r['gflops']:7.0f} "
                f"{r['achieved_gflops_per_s']:8.0f} {r['matmul_peak_gflops_per_s']:11.0f} "
                f"({r['matmul_dtype']})"
            )
            print(
                f"{'':>10} runs: {', '.join(f'{t:.2f}' for t in r['runs_s'])} s; "
                f"build {r['build_s']:.1f} s",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
