"""Prints forward and forward+backward times of ``multi_level_roi_align``.

Setting (the RoIAlign issue): a P2..P5 pyramid of one 800x1344 image, C=256; 512 and 1000
RoIs at 7x7 (box head) and 14x14 (mask head), adaptive sampling (``sampling_ratio=0``).
Implementations: the custom op, the pure-TF twin (graph mode, and XLA-compiled), and, for
the cost of the Model Garden's approach (one bilinear sample per bin centre), the TF twin with
``sampling_ratio=1``. Each figure is the median over ``--repeats`` runs after one warm-up
call, in milliseconds, all inside ``tf.function``.

    python benchmarks/roi_align.py [--repeats 5] [--rois 512 1000] [--sizes 7 14]

``--cpu-builds dispatch native portable`` times the custom op alone under each CPU build
mode (``KMASK_CPU_BUILD``, one process per mode, the modes interleaved over ``--rounds``
rounds so that a change of load on the machine hits them alike; the best round's median
counts) and prints each mode's times relative to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmask.native import cpu_variant, custom_ops
from kmask.ops import multi_level_roi_align  # noqa: E402

HEIGHT, WIDTH, CHANNELS = 800, 1344, 256


def make_inputs(num_rois: int, seed: int = 0) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """P2..P5 features [1, H/2^k, W/2^k, 256] and [1, num_rois, 4] proposal-like boxes:
    sqrt(area) log-uniform in [16, 800] px, aspect ratio log-uniform in [1/3, 3], clipped to
    the image (all four levels get boxes)."""
    rng = np.random.default_rng(seed)
    pyramid = {
        f"P{k}": tf.constant(
            rng.normal(size=(1, HEIGHT >> k, WIDTH >> k, CHANNELS)).astype(np.float32)
        )
        for k in range(2, 6)
    }
    size = np.exp(rng.uniform(np.log(16), np.log(800), num_rois))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), num_rois))
    box_h, box_w = size * np.sqrt(ratio), size / np.sqrt(ratio)
    cy, cx = rng.uniform(0, HEIGHT, num_rois), rng.uniform(0, WIDTH, num_rois)
    boxes = np.stack(
        [
            np.clip(cy - box_h / 2, 0, HEIGHT),
            np.clip(cx - box_w / 2, 0, WIDTH),
            np.clip(cy + box_h / 2, 0, HEIGHT),
            np.clip(cx + box_w / 2, 0, WIDTH),
        ],
        -1,
    )
    return pyramid, tf.constant(boxes[None].astype(np.float32))


def median_ms(function, *args, repeats: int) -> float:
    function(*args)  # trace / compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        tf.nest.map_structure(lambda t: t.numpy(), result)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def make_functions(implementation: str, size: int, sampling_ratio: int, jit: bool):
    def forward(pyramid, boxes):
        return multi_level_roi_align(
            pyramid, boxes, size, sampling_ratio=sampling_ratio, implementation=implementation
        )

    def forward_backward(pyramid, boxes):
        with tf.GradientTape() as tape:
            tape.watch(pyramid)
            loss = tf.reduce_sum(forward(pyramid, boxes))
        return tape.gradient(loss, pyramid)

    return (tf.function(forward, jit_compile=jit), tf.function(forward_backward, jit_compile=jit))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rois", type=int, nargs="+", default=[512, 1000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7, 14])
    parser.add_argument("--skip-xla", action="store_true", help="skip the XLA-compiled twin")
    parser.add_argument(
        "--cpu-builds",
        nargs="+",
        choices=cpu_variant.CPU_BUILD_MODES,
        help="time the custom op alone under each KMASK_CPU_BUILD mode (one process each)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --cpu-builds")
    parser.add_argument("--custom-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_builds:
        compare_cpu_builds(args)
        return

    status = custom_ops.status()
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}"
    )
    print(f"custom op: {status.library} ({status.reason}; {status.cpu_build})")
    variants = [("custom", "custom", 0, False)]
    if not args.custom_only:
        variants.append(("tf", "tf", 0, False))
        if not args.skip_xla:
            variants.append(("tf+xla", "tf", 0, True))
        variants.append(("tf sr=1 (MG cost)", "tf", 1, False))

    header = f"{'rois':>5} {'out':>4} {'variant':<18} {'fwd ms':>9} {'fwd+bwd ms':>11}"
    print(header)
    print("-" * len(header))
    for num_rois in args.rois:
        pyramid, boxes = make_inputs(num_rois)
        for size in args.sizes:
            results = {}
            for name, implementation, sampling_ratio, jit in variants:
                forward, forward_backward = make_functions(
                    implementation, size, sampling_ratio, jit
                )
                results[name] = (
                    median_ms(forward, pyramid, boxes, repeats=args.repeats),
                    median_ms(forward_backward, pyramid, boxes, repeats=args.repeats),
                )
                print(
                    f"{num_rois:>5} {size:>4} {name:<18} {results[name][0]:>9.1f} "
                    f"{results[name][1]:>11.1f}",
                    flush=True,
                )
            if args.custom_only:
                print("RESULT", json.dumps([num_rois, size, *results["custom"]]), flush=True)
            custom = results["custom"]
            for name, (fwd, both) in results.items():
                if name != "custom":
                    print(
                        f"{'':>5} {'':>4} {'tf/custom' if name == 'tf' else name + '/custom':<18}"
                        f" {fwd / custom[0]:>8.1f}x {both / custom[1]:>10.1f}x"
                    )


def compare_cpu_builds(args: argparse.Namespace) -> None:
    """Runs this script with ``--custom-only`` under each ``KMASK_CPU_BUILD`` mode in turn and
    prints the custom op's times side by side (ratios against the first mode)."""
    times: dict[str, dict[tuple[int, int], tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for mode in args.cpu_builds:
            command = [sys.executable, __file__, "--custom-only", "--repeats", str(args.repeats)]
            command += ["--rois", *map(str, args.rois), "--sizes", *map(str, args.sizes)]
            env = {**os.environ, "KMASK_CPU_BUILD": mode}
            output = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            lines = output.stdout.splitlines()
            if mode not in times:
                print("\n".join(line for line in lines if line.startswith("custom op:")))
            best = times.setdefault(mode, {})
            for line in lines:
                if line.startswith("RESULT "):
                    rois, size, fwd, both = json.loads(line[len("RESULT ") :])
                    old = best.get((rois, size), (float("inf"), float("inf")))
                    best[(rois, size)] = (min(old[0], fwd), min(old[1], both))
    first = args.cpu_builds[0]
    print(
        f"{'rois':>5} {'out':>4} {'mode':<10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'vs ' + first:>14}"
    )
    for key, (base_fwd, base_both) in times[first].items():
        for mode in args.cpu_builds:
            fwd, both = times[mode][key]
            print(
                f"{key[0]:>5} {key[1]:>4} {mode:<10} {fwd:>9.1f} {both:>11.1f} "
                f"{fwd / base_fwd:>6.2f}x {both / base_both:>6.2f}x"
            )


if __name__ == "__main__":
    main()
