"""Balanced random sampling of foreground / background rows with static output shapes."""

from __future__ import annotations

import tensorflow as tf


def _random_order(candidates: tf.Tensor, k: int) -> tf.Tensor:
    """Indices [B, k] of candidates [B, N] in random order; true entries come first."""
    noise = tf.random.uniform(tf.shape(candidates), 0.0, 1.0)
    keys = tf.where(candidates, noise, -1.0)
    k_eff = tf.minimum(k, tf.shape(candidates)[1])
    _, indices = tf.math.top_k(keys, k=k_eff)
    indices = tf.pad(indices, [[0, 0], [0, k - k_eff]])
    return tf.ensure_shape(indices, [None, k])


def sample_balanced(
    labels: tf.Tensor, num_samples: int, positive_fraction: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples ``num_samples`` rows per image from labels [B, N] in {1, 0, -1}.

    Takes ``min(#positives, int(num_samples * positive_fraction))`` positives uniformly at
    random, fills the rest with random negatives (as many as exist), never ignored rows.
    Positives come first, then negatives, then padding.

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
    pos_order = _random_order(positive, max_positives)
    neg_order = _random_order(negative, num_samples)
    # Slot s holds the s-th positive while s < num_pos, then the (s - num_pos)-th negative.
    slots = tf.tile(tf.range(num_samples)[None, :], [tf.shape(labels)[0], 1])
    from_pos = tf.gather(pos_order, tf.minimum(slots, max_positives - 1), batch_dims=1)
    from_neg = tf.gather(neg_order, tf.maximum(slots - num_pos[:, None], 0), batch_dims=1)
    is_pos = slots < num_pos[:, None]
    is_neg = (~is_pos) & (slots < (num_pos + num_neg)[:, None])
    indices = tf.where(is_pos, from_pos, tf.where(is_neg, from_neg, 0))
    sampled = tf.where(is_pos, 1, tf.where(is_neg, 0, -1))
    return tf.cast(indices, tf.int32), tf.cast(sampled, tf.int32)
