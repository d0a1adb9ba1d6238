"""Balanced random sampling of foreground / background rows with static output shapes.

Randomness is stateless when per-image seeds are given: image ``b``'s draw is
``tf.random.stateless_uniform`` seeded by ``(seeds[b], salt)``, so it depends on nothing
but that image's seed (the data pipeline's, ``kmask.data.pipeline.SEED_KEY``) and the
caller's salt. Salts in use: 0 and 1 the augmentation (``kmask.data.transforms``), 2 the
RPN's anchor sampling, 3 the RoI sampling, 4 the segment proposals' windows.
"""

from __future__ import annotations

import tensorflow as tf


def _uniform_noise(shape_of: tf.Tensor, seeds: tf.Tensor | None, salt: int) -> tf.Tensor:
    """Uniform [0, 1) float32 noise of the shape of ``shape_of`` [B, N].

    Args:
      shape_of: any [B, N] tensor.
      seeds: int64 [B] per-image seeds: row ``b`` is ``stateless_uniform([N],
        (seeds[b], salt))``; None: stateful ``tf.random.uniform`` (the global seed's
        stream, which a process restart begins anew).
      salt: tells apart the draws of several callers from the same seeds.
    """
    if seeds is None:
        return tf.random.uniform(tf.shape(shape_of), 0.0, 1.0)
    count = tf.shape(shape_of)[1]
    salt_tensor = tf.constant(salt, tf.int64)
    return tf.map_fn(
        lambda seed: tf.random.stateless_uniform([count], tf.stack([seed, salt_tensor])),
        tf.cast(seeds, tf.int64),
        fn_output_signature=tf.TensorSpec([None], tf.float32),
    )


def _random_order(candidates: tf.Tensor, noise: tf.Tensor, k: int) -> tf.Tensor:
    """Indices [B, k] of candidates [B, N] in the order of ``noise`` [B, N] (largest
    first); true entries come first."""
    keys = tf.where(candidates, noise, -1.0)
    k_eff = tf.minimum(k, tf.shape(candidates)[1])
    _, indices = tf.math.top_k(keys, k=k_eff)
    indices = tf.pad(indices, [[0, 0], [0, k - k_eff]])
    return tf.ensure_shape(indices, [None, k])


def sample_balanced(
    labels: tf.Tensor,
    num_samples: int,
    positive_fraction: float,
    seeds: tf.Tensor | None = None,
    salt: int = 0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples ``num_samples`` rows per image from labels [B, N] in {1, 0, -1}.

    Takes ``min(#positives, int(num_samples * positive_fraction))`` positives uniformly at
    random, fills the rest with random negatives (as many as exist), never ignored rows.
    Positives come first, then negatives, then padding. One uniform draw per row
    (``_uniform_noise(labels, seeds, salt)``) orders the positives and the negatives.

    Args:
      labels: [B, N] int in {1, 0, -1}.
      num_samples: rows sampled per image.
      positive_fraction: most positives among them.
      seeds: int64 [B] per-image seeds (stateless sampling), or None (stateful).
      salt: the caller's salt (module docstring).

    Returns:
      indices: [B, num_samples] int32 row indices (0 for padding).
      sampled_labels: [B, num_samples] int32: 1 positive, 0 negative, -1 padding.
    """
    labels = tf.cast(labels, tf.int32)
    max_positives = max(int(num_samples * positive_fraction), 1)
    positive = labels == 1
    negative = labels == 0
    num_pos = tf.minimum(
        tf.reduce_sum(tf.cast(positive, tf.int32), axis=1),
        int(num_samples * positive_fraction),
    )
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), num_samples - num_pos)
    noise = _uniform_noise(labels, seeds, salt)
    pos_order = _random_order(positive, noise, max_positives)
    neg_order = _random_order(negative, noise, num_samples)
    # Slot s holds the s-th positive while s < num_pos, then the (s - num_pos)-th negative.
    slots = tf.tile(tf.range(num_samples)[None, :], [tf.shape(labels)[0], 1])
    from_pos = tf.gather(pos_order, tf.minimum(slots, max_positives - 1), batch_dims=1)
    from_neg = tf.gather(neg_order, tf.maximum(slots - num_pos[:, None], 0), batch_dims=1)
    is_pos = slots < num_pos[:, None]
    is_neg = (~is_pos) & (slots < (num_pos + num_neg)[:, None])
    indices = tf.where(is_pos, from_pos, tf.where(is_neg, from_neg, 0))
    sampled = tf.where(is_pos, 1, tf.where(is_neg, 0, -1))
    return tf.cast(indices, tf.int32), tf.cast(sampled, tf.int32)
