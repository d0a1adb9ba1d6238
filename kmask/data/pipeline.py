"""From decoded examples to batches: the part of the pipeline shared by every source."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import transforms


def batch_examples(
    examples: tf.data.Dataset,
    config: DataConfig,
    *,
    training: bool,
    batch_size: int,
    flip_permutation: Sequence[int] = (),
) -> tf.data.Dataset:
    """Applies ``transforms.preprocess`` in parallel, batches and prefetches.

    Each example is paired with an int64 seed from ``tf.data.Dataset.random(config.seed)``
    (a new stream every epoch, the same streams for the same seed), so augmentation is
    repeatable and independent of the number of parallel calls.

    Images are padded per batch to the largest (already a multiple of
    ``config.size_divisibility``) unless ``config.image_size`` fixes the size. Training
    drops the last partial batch (static batch dimension); evaluation keeps it.

    Returns:
      dataset of ``(features, targets)`` as documented in ``kmask.data``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip(examples, seeds)
    dataset = dataset.map(
        functools.partial(
            transforms.preprocess,
            config=config,
            training=training,
            flip_permutation=tuple(flip_permutation),
        ),
        num_parallel_calls=config.num_parallel_calls,
    )
    if config.image_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=training)
    else:
        dataset = dataset.padded_batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)
