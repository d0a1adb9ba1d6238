"""Prints the time of one training step (``model.fit``) of a config on fixed synthetic data.

Measures what ``kmask train`` pays per step without the input pipeline: one batch of
random images with three ground-truth instances each, repeated, trained with the config's
optimizer. The first ``--warmup`` steps (tracing) are excluded; the figure is the mean over
``--steps`` steps, in milliseconds. Compare two versions of kmask by running this script in
the same session on the same machine (a figure from another machine or another time is not
a comparison: shared CI machines vary several-fold).

    python benchmarks/train_step.py [--config configs/shapes_tiny.yaml] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmask.config import load_config  # noqa: E402
from kmask.modeling import build_mask_rcnn  # noqa: E402
from kmask.training import build_optimizer  # noqa: E402


def synthetic_batch(config, batch: int, seed: int = 0) -> tuple[dict, dict]:
    """``(features, targets)`` of ``batch`` random images at the config's training size."""
    side = max(config.data.min_size)
    rng = np.random.default_rng(seed)
    count = config.data.max_instances
    boxes = np.zeros((batch, count, 4), np.float32)
    boxes[:, :3] = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.7, 0.4], [0.55, 0.55, 0.9, 0.85]])
    boxes *= side
    classes = np.full((batch, count), -1, np.int32)
    classes[:, :3] = np.arange(3) % config.model.num_classes
    masks = np.zeros((batch, count, config.data.mask_size, config.data.mask_size), np.uint8)
    masks[:, :3, 10:-10, 10:-10] = 1
    features = {
        "images": rng.uniform(0, 255, (batch, side, side, 3)).astype(np.float32),
        "image_size": np.full((batch, 2), side, np.int32),
    }
    return features, {"gt_boxes": boxes, "gt_classes": classes, "gt_masks": masks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_tiny.yaml")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config)
    batch = args.batch_size or config.train.batch_size
    keras.utils.set_random_seed(0)
    model = build_mask_rcnn(config.model)
    model.compile(optimizer=build_optimizer(config.train, global_batch_size=batch))
    dataset = tf.data.Dataset.from_tensors(synthetic_batch(config, batch)).repeat()
    model.fit(dataset, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    elapsed = time.perf_counter() - start
    print(f"{args.config}: batch {batch}, {1000 * elapsed / args.steps:.0f} ms per training step")


if __name__ == "__main__":
    main()
