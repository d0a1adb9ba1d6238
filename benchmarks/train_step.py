"""Prints the time of one training step (``model.fit``) of a config on fixed synthetic data.

Measures what ``kmask train`` pays per step without the input pipeline: one batch of
random images with three ground-truth instances each, repeated, trained with the config's
optimizer. The first ``--warmup`` steps (tracing) are excluded; the figure is the mean over
``--steps`` steps, in milliseconds. Compare two versions of kmask by running this script in
the same session on the same machine (a figure from another machine or another time is not
a comparison: shared CI machines vary several-fold).

``--deterministic`` measures with ``train.deterministic`` on or off (default: as the
config says), as ``kmask train`` runs it: on is TensorFlow's op determinism and oneDNN off
(``kmask.training.Determinism``), off is TensorFlow's defaults. oneDNN is decided when
TensorFlow is imported, so ``both`` runs each setting in a fresh process, alternating,
``--rounds`` times each, and prints every figure, the fastest of each setting (the figure
least disturbed by other work on the machine) and the medians. ``KMASK_ROI_ALIGN``
picks the RoIAlign implementation as usual.

    python benchmarks/train_step.py [--config configs/shapes_tiny.yaml] [--steps 30]
        [--deterministic config|on|off|both] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def synthetic_batch(config, batch: int, seed: int = 0) -> tuple[dict, dict]:
    """``(features, targets)`` of ``batch`` random images at the config's training size."""
    import numpy as np

    side = max(config.data.min_size)
    rng = np.random.default_rng(seed)
    count = config.data.max_instances
    boxes = np.zeros((batch, count, 4), np.float32)
    boxes[:, :3] = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.7, 0.4], [0.55, 0.55, 0.9, 0.85]])
    boxes *= side
    classes = np.full((batch, count), -1, np.int32)
    classes[:, :3] = np.arange(3) % config.model.num_classes
    masks = np.zeros((batch, count, config.data.gt_mask_size, config.data.gt_mask_size), np.uint8)
    masks[:, :3, 10:-10, 10:-10] = 1
    features = {
        "images": rng.uniform(0, 255, (batch, side, side, 3)).astype(np.float32),
        "image_size": np.full((batch, 2), side, np.int32),
    }
    return features, {"gt_boxes": boxes, "gt_classes": classes, "gt_masks": masks}


def step_time(config, batch: int, steps: int, warmup: int, deterministic: bool) -> float:
    """Mean milliseconds per training step, after ``warmup`` steps."""
    import keras
    import tensorflow as tf

    from kmask.modeling import build_mask_rcnn
    from kmask.training import Determinism, build_optimizer

    keras.utils.set_random_seed(0)
    with Determinism(deterministic):
        model = build_mask_rcnn(config.model)
        model.compile(optimizer=build_optimizer(config.train, global_batch_size=batch))
        dataset = tf.data.Dataset.from_tensors(synthetic_batch(config, batch)).repeat()
        model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        elapsed = time.perf_counter() - start
    return 1000 * elapsed / steps


def compare(args: argparse.Namespace) -> None:
    """Runs this script once per setting and round, alternating, and prints the fastest
    and the median figure of each setting."""
    figures: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for setting in figures:
            command = [sys.executable, os.path.abspath(__file__), "--config", args.config]
            command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.batch_size:
                command += ["--batch-size", str(args.batch_size)]
            output = subprocess.run(
                [*command, "--deterministic", setting],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            print(output.strip(), flush=True)
            figures[setting].append(float(re.findall(r"([\d.]+) ms per training step", output)[-1]))
    for name, pick in (("fastest", min), ("median", statistics.median)):
        off, on = (pick(figures[setting]) for setting in ("off", "on"))
        print(
            f"{name} of {args.rounds}: deterministic off {off:.0f} ms, on {on:.0f} ms per "
            f"training step ({100 * (on / off - 1):+.1f}%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_tiny.yaml")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--deterministic",
        choices=("config", "on", "off", "both"),
        default="config",
        help="train.deterministic for the measurement; both: each in a fresh process",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with both: runs of each setting")
    args = parser.parse_args()
    if args.deterministic == "both":
        compare(args)
        return

    from kmask.config import load_config  # no TensorFlow: oneDNN is still undecided

    config = load_config(args.config)
    deterministic = {"on": True, "off": False}.get(args.deterministic, config.train.deterministic)
    if deterministic:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # as kmask train sets it
    batch = args.batch_size or config.train.batch_size
    milliseconds = step_time(config, batch, args.steps, args.warmup, deterministic)
    print(
        f"{args.config}: batch {batch}, deterministic {'on' if deterministic else 'off'}, "
        f"{milliseconds:.1f} ms per training step"
    )


if __name__ == "__main__":
    main()
