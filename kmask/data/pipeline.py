"""From decoded examples to batches: the part of the pipeline shared by every source.

Two ways in: ``batch_examples`` batches one epoch of examples (``build``: evaluation, and
training loops of one's own), ``training_stream`` makes the endless, exactly resumable
training stream of ``kmask.training.Trainer`` from a source's passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import transforms
from kmask.data.stream_position import STREAM_START, StreamPosition, make_key

# Target keys the pipeline adds in training next to the ground truth.
SEED_KEY = "seed"  # int64 [B]: the image's seed (augmentation and the model's sampling)
POSITION_KEY = "stream_position"  # int64 [B]: StreamPosition.key (training_stream only)
# Key of the item index inside its pass in the examples of a ``PassExamples`` function.
INDEX_KEY = "stream_index"

# (order_seed int64 [2], first item int64 []) -> the pass's decoded examples.
PassExamples = Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset]


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
    repeatable and independent of the number of parallel calls. In training the seed also
    goes into the targets (``SEED_KEY``), for the model's random sampling.

    Images are padded per batch to the largest (already a multiple of
    ``config.size_divisibility``) unless ``config.image_size`` fixes the size. Training
    drops the last partial batch (static batch dimension); evaluation keeps it.

    Returns:
      dataset of ``(features, targets)`` as documented in ``kmask.data``.
    """
    seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True)
    return _preprocess_and_batch(
        tf.data.Dataset.zip(examples, seeds),
        config,
        training=training,
        batch_size=batch_size,
        flip_permutation=flip_permutation,
    )


def training_stream(
    pass_examples: PassExamples,
    config: DataConfig,
    *,
    batch_size: int,
    start: StreamPosition = STREAM_START,
    flip_permutation: Sequence[int] = (),
) -> tf.data.Dataset:
    """The endless training batches from ``start``, a pure function of the data and
    ``config.seed``.

    The examples of passes ``start.pass_index``, ``start.pass_index + 1``, ... follow one
    another (the first pass from item ``start.index``) and are batched across pass
    boundaries. Pass ``p`` is ``pass_examples((config.seed, p), first)``: the source orders
    its items by that seed alone. Each example's seed is a stateless hash of
    ``(config.seed, its position key)``, so its augmentation and the model's sampling on it
    do not depend on what came before. The targets carry the seed (``SEED_KEY``) and the
    position key (``POSITION_KEY``); the trainer resumes the stream after the last
    position of the last batch it trained on, and since the skipped items are skipped
    again, the resumed stream yields the very batches the uninterrupted one would.

    The stream ends when a whole pass gives fewer than ``batch_size`` examples (too
    little readable data), instead of looking for them forever.

    Args:
      pass_examples: ``(order_seed, first) -> dataset`` of the decoded examples of items
        ``first, first + 1, ...`` of the pass that the int64 ``[2]`` ``order_seed``
        orders, each with its item index under ``INDEX_KEY``; the same arguments must
        give the same examples.
      config: the data configuration; ``config.seed`` must be set.
      batch_size: images per batch.
      start: the first item of the stream.
      flip_permutation: keypoint order after a flip (``CategoryMap.flip_permutation``).

    Returns:
      dataset of ``(features, targets)`` as documented in ``kmask.data``.
    """
    if config.seed is None:
        raise ValueError("training_stream needs config.seed (the stream is a function of it)")
    data_seed = tf.constant(config.seed, tf.int64)

    def one_pass(pass_index: tf.Tensor) -> tf.data.Dataset:
        first = tf.where(pass_index == start.pass_index, tf.constant(start.index, tf.int64), 0)
        examples = pass_examples(tf.stack([data_seed, pass_index]), first).map(
            lambda example: _with_key(example, make_key(pass_index, example[INDEX_KEY]))
        )
        # A marker closes the pass; a full pass (from item 0) may end the stream.
        marker = tf.nest.map_structure(_placeholder, examples.element_spec)
        return examples.map(lambda example: (example, False, False)).concatenate(
            tf.data.Dataset.from_tensors((marker, True, first == 0))
        )

    def count(seen: tf.Tensor, element: tuple) -> tuple[tf.Tensor, tuple]:
        example, is_marker, full = element
        too_few = is_marker & full & (seen < batch_size)
        seen = tf.where(is_marker, tf.constant(0, tf.int64), seen + 1)
        return seen, (example, is_marker, too_few)

    def with_seed(example: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        key = tf.stack([data_seed, example[POSITION_KEY]])
        return example, tf.random.stateless_uniform(
            [], key, minval=None, maxval=None, dtype=tf.int64
        )

    stream = (
        tf.data.Dataset.range(start.pass_index, 2**31)
        .flat_map(one_pass)
        .scan(tf.constant(0, tf.int64), count)
        .take_while(lambda example, is_marker, too_few: ~too_few)
        .filter(lambda example, is_marker, too_few: ~is_marker)
        .map(lambda example, is_marker, too_few: with_seed(example))
    )
    return _preprocess_and_batch(
        stream, config, training=True, batch_size=batch_size, flip_permutation=flip_permutation
    )


def _with_key(example: Mapping[str, tf.Tensor], key: tf.Tensor) -> dict[str, tf.Tensor]:
    """``example`` with its position key instead of its item index."""
    return {**{k: v for k, v in example.items() if k != INDEX_KEY}, POSITION_KEY: key}


def _placeholder(spec: tf.TensorSpec) -> tf.Tensor:
    """Zeros of ``spec``'s dtype, unknown dimensions empty."""
    return tf.zeros([0 if size is None else size for size in spec.shape], spec.dtype)


def _preprocess_and_batch(
    examples: tf.data.Dataset,
    config: DataConfig,
    *,
    training: bool,
    batch_size: int,
    flip_permutation: Sequence[int],
) -> tf.data.Dataset:
    """``(example, seed)`` pairs -> prefetched ``(features, targets)`` batches; the
    training targets get the seed and, when the example has one, its position key."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    preprocess = functools.partial(
        transforms.preprocess,
        config=config,
        training=training,
        flip_permutation=tuple(flip_permutation),
    )

    def element(example: Mapping[str, tf.Tensor], seed: tf.Tensor) -> tuple[dict, dict]:
        features, targets = preprocess(example, seed)
        if training:
            targets[SEED_KEY] = seed
            if POSITION_KEY in example:
                targets[POSITION_KEY] = example[POSITION_KEY]
        return features, targets

    dataset = examples.map(element, num_parallel_calls=config.num_parallel_calls)
    if config.image_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=training)
    else:
        dataset = dataset.padded_batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)
