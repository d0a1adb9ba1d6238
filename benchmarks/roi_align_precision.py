"""Prints RoIAlign forward and forward+backward times per feature dtype, same run.

Setting (kmask issue 23): one P2-like map ``features [2, 200, 272, 256]`` (stride 4 of an
800x1088 batch of two), 1000 boxes at 7x7 with ``sampling_ratio=2``, ``spatial_scale=0.25``;
boxes (y1, x1, y2, x2) float32 in input pixels, sqrt(area) log-uniform in [16, 400] px,
aspect ratio log-uniform in [1/3, 3]. The features are float32, bfloat16 or float16 (the
last two are the float32 values rounded); boxes stay float32. The backward is the gradient
with respect to the features of the output times a fixed random upstream gradient. Each
figure is the median over ``--repeats`` calls of a ``tf.function`` after one warm-up call,
in milliseconds, and the ratio to float32's. The dtypes are interleaved round by round so
that a change of load on the machine hits them alike.

    python benchmarks/roi_align_precision.py [--repeats 5] [--dtypes float32 bfloat16]
        [--implementations custom tf]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmask.native import custom_ops  # noqa: E402
from kmask.ops import roi_align  # noqa: E402

SHAPE = (2, 200, 272, 256)  # [B, H, W, C]
STRIDE = 4
NUM_BOXES, OUTPUT_SIZE, SAMPLING_RATIO = 1000, 7, 2


def make_inputs(seed: int = 0) -> tuple[np.ndarray, tf.Tensor, tf.Tensor, np.ndarray]:
    """float32 features [B, H, W, C], boxes [K, 4] float32 (y1, x1, y2, x2) in input pixels,
    box indices [K] int32 and a float32 upstream gradient [K, 7, 7, C]."""
    rng = np.random.default_rng(seed)
    batch, height, width, channels = SHAPE
    image_h, image_w = height * STRIDE, width * STRIDE
    features = rng.normal(size=SHAPE).astype(np.float32)
    size = np.exp(rng.uniform(np.log(16), np.log(400), NUM_BOXES))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), NUM_BOXES))
    box_h, box_w = size * np.sqrt(ratio), size / np.sqrt(ratio)
    cy, cx = rng.uniform(0, image_h, NUM_BOXES), rng.uniform(0, image_w, NUM_BOXES)
    boxes = np.stack(
        [
            np.clip(cy - box_h / 2, 0, image_h),
            np.clip(cx - box_w / 2, 0, image_w),
            np.clip(cy + box_h / 2, 0, image_h),
            np.clip(cx + box_w / 2, 0, image_w),
        ],
        -1,
    ).astype(np.float32)
    indices = rng.integers(0, batch, NUM_BOXES).astype(np.int32)
    upstream = rng.normal(size=(NUM_BOXES, OUTPUT_SIZE, OUTPUT_SIZE, channels))
    return features, tf.constant(boxes), tf.constant(indices), upstream.astype(np.float32)


def make_functions(implementation: str):
    """(forward, forward_backward) ``tf.function``s of (features, boxes, indices, upstream)."""

    def forward(features, boxes, indices):
        return roi_align(
            features,
            boxes,
            indices,
            OUTPUT_SIZE,
            spatial_scale=1.0 / STRIDE,
            sampling_ratio=SAMPLING_RATIO,
            aligned=True,
            implementation=implementation,
        )

    def forward_backward(features, boxes, indices, upstream):
        with tf.GradientTape() as tape:
            tape.watch(features)
            pooled = forward(features, boxes, indices)
        return pooled, tape.gradient(pooled, features, output_gradients=upstream)

    return tf.function(forward), tf.function(forward_backward)


def time_ms(function, *args) -> float:
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), function(*args))
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16", "float16"],
    )
    parser.add_argument(
        "--implementations", nargs="+", default=["custom"], choices=["custom", "tf"]
    )
    args = parser.parse_args()

    status = custom_ops.status()
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; custom op: {status.library} "
        f"({status.cpu_build})"
    )
    print(
        f"features {list(SHAPE)}, {NUM_BOXES} boxes, {OUTPUT_SIZE}x{OUTPUT_SIZE}, "
        f"sampling_ratio {SAMPLING_RATIO}; median of {args.repeats} calls, ms"
    )
    features32, boxes, indices, upstream32 = make_inputs()
    inputs = {
        name: (
            tf.cast(tf.constant(features32), name),
            tf.cast(tf.constant(upstream32), name),
        )
        for name in args.dtypes
    }
    for implementation in args.implementations:
        forward, forward_backward = make_functions(implementation)
        times: dict[str, dict[str, list[float]]] = {
            name: {"forward": [], "forward+backward": []} for name in args.dtypes
        }
        for features, upstream in inputs.values():  # trace and warm up
            forward(features, boxes, indices)
            forward_backward(features, boxes, indices, upstream)
        for _ in range(args.repeats):
            for name, (features, upstream) in inputs.items():
                times[name]["forward"].append(time_ms(forward, features, boxes, indices))
                times[name]["forward+backward"].append(
                    time_ms(forward_backward, features, boxes, indices, upstream)
                )
        base = {phase: statistics.median(t) for phase, t in times[args.dtypes[0]].items()}
        for name in args.dtypes:
            figures = ", ".join(
                f"{phase} {statistics.median(t):8.1f} ms "
                f"(x{statistics.median(t) / base[phase]:.2f})"
                for phase, t in times[name].items()
            )
            print(f"{implementation:6s} {name:9s} {figures}")


if __name__ == "__main__":
    main()
