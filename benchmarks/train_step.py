"""Prints the time of one training step (``model.fit``) of a config on fixed synthetic data.

Measures what ``kmask train`` pays per step without the input pipeline: one batch of
random images (square, the config's largest ``data.min_size``) with three ground-truth
instances each, repeated, trained with the config's optimizer, the model built and
compiled under the config's ``train.mixed_precision`` dtype policy as ``kmask train``
builds it (``Trainer.build_model``). The first ``--warmup`` steps (tracing) are excluded;
the figures are the mean and the median over ``--steps`` steps, in milliseconds. Compare
two versions of kmask by running this script in the same session on the same machine (a
figure from another machine or another time is not a comparison: shared CI machines vary
several-fold).

``--precision`` measures in other precisions than the config's: ``float32``,
``bfloat16`` or ``float16`` train under the Keras policy ``float32``, ``mixed_bfloat16``
or ``mixed_float16`` (``train.mixed_precision``; float32 weights, and under
``mixed_float16`` Keras' loss scaling). bfloat16 is fast on a CPU only through oneDNN,
which ``train.deterministic`` turns off: measure it with ``--deterministic off``. Every
figure says whether oneDNN was on.

``--deterministic`` measures with ``train.deterministic`` on or off (default: as the
config says), as ``kmask train`` runs it: on is TensorFlow's op determinism and oneDNN off
(``kmask.training.Determinism``), off is TensorFlow's defaults. oneDNN is decided when
TensorFlow is imported, so ``both``, or several precisions, run each (determinism,
precision) setting in a fresh process, alternating, ``--rounds`` times each, and print
every figure, the fastest of each setting (the figure least disturbed by other work on
the machine) and the medians, each relative to the first setting. ``KMASK_ROI_ALIGN``
picks the RoIAlign implementation as usual.

    python benchmarks/train_step.py [--config configs/shapes_tiny.yaml] [--steps 30]
        [--deterministic config|on|off|both] [--rounds 3]
        [--precision float32 bfloat16] [--set section.field=value ...]

ResNet-50-FPN at 800x800, batch 2, float32 against bfloat16 (random initial weights: the
ImageNet file of the COCO config is not needed)::

    python benchmarks/train_step.py --config mask_rcnn_r50_fpn_1x_coco \\
        --set model.backbone.weights=null --batch-size 2 --deterministic off \\
        --precision float32 bfloat16 --steps 5 --warmup 2 --rounds 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The Keras dtype policy (train.mixed_precision) of each --precision.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


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


def step_times(
    config, batch: int, steps: int, warmup: int, deterministic: bool
) -> tuple[float, float]:
    """Mean and median milliseconds per training step, after ``warmup`` steps, of the model
    built and compiled under ``config.train.mixed_precision``."""
    import keras
    import tensorflow as tf

    from kmask.modeling import build_mask_rcnn
    from kmask.training import Determinism, build_optimizer

    durations: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            durations.append(time.perf_counter() - self.start)

    keras.utils.set_random_seed(0)
    with Determinism(deterministic):
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(config.train.mixed_precision)
        try:
            model = build_mask_rcnn(config.model)
            model.build({"images": (None, None, None, 3)})
            model.compile(optimizer=build_optimizer(config.train, global_batch_size=batch))
        finally:
            keras.mixed_precision.set_global_policy(previous)
        dataset = tf.data.Dataset.from_tensors(synthetic_batch(config, batch)).repeat()
        model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[StepTimer()])
        elapsed = time.perf_counter() - start
    return 1000 * elapsed / steps, 1000 * statistics.median(durations)


def compare(args: argparse.Namespace) -> None:
    """Runs this script once per (determinism, precision) setting and round, alternating,
    and prints the fastest and the median figure of each setting."""
    determinism = ("off", "on") if args.deterministic == "both" else (args.deterministic,)
    settings = list(itertools.product(determinism, args.precision or ["config"]))
    figures: dict[tuple[str, str], list[float]] = {setting: [] for setting in settings}
    for _ in range(args.rounds):
        for deterministic, precision in settings:
            command = [sys.executable, os.path.abspath(__file__), "--config", args.config]
            command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            command += ["--deterministic", deterministic]
            if args.batch_size:
                command += ["--batch-size", str(args.batch_size)]
            if precision != "config":
                command += ["--precision", precision]
            for override in args.set:
                command += ["--set", override]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            print(output.strip(), flush=True)
            mean = re.findall(r"([\d.]+) ms per training step", output)[-1]
            figures[(deterministic, precision)].append(float(mean))

    def label(setting: tuple[str, str]) -> str:
        return f"deterministic {setting[0]} {setting[1]}"

    first = settings[0]
    for name, pick in (("fastest", min), ("median", statistics.median)):
        values = {setting: pick(figures[setting]) for setting in settings}
        parts = [f"{label(first)} {values[first]:.0f} ms"]
        for setting in settings[1:]:
            change = 100 * (values[setting] / values[first] - 1)
            parts.append(f"{label(setting)} {values[setting]:.0f} ms ({change:+.1f}%)")
        print(f"{name} of {args.rounds}: {', '.join(parts)} per training step (mean of steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_tiny.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, as kmask train --set (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--deterministic",
        choices=("config", "on", "off", "both"),
        default="config",
        help="train.deterministic for the measurement; both: each in a fresh process",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=tuple(POLICIES),
        default=None,
        help="train under these precisions (default: train.mixed_precision of the config); "
        "several: each in a fresh process",
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each compared setting")
    args = parser.parse_args()
    if args.deterministic == "both" or (args.precision and len(args.precision) > 1):
        compare(args)
        return

    import dataclasses

    from kmask.config import load_config  # no TensorFlow: oneDNN is still undecided

    config = load_config(args.config, args.set)
    if args.precision:
        train = dataclasses.replace(config.train, mixed_precision=POLICIES[args.precision[0]])
        config = dataclasses.replace(config, train=train)
    deterministic = {"on": True, "off": False}.get(args.deterministic, config.train.deterministic)
    if deterministic:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # as kmask train sets it
    batch = args.batch_size or config.train.batch_size
    mean, median = step_times(config, batch, args.steps, args.warmup, deterministic)
    from tensorflow.python.util import _pywrap_util_port

    side = max(config.data.min_size)
    print(
        f"{args.config}: batch {batch}, {side}x{side}, {config.train.mixed_precision}, "
        f"deterministic {'on' if deterministic else 'off'}, oneDNN "
        f"{'on' if _pywrap_util_port.IsMklEnabled() else 'off'}, median {median:.1f} ms, "
        f"{mean:.1f} ms per training step"
    )


if __name__ == "__main__":
    main()
