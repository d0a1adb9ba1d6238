"""Balanced sampler: proportions, order, padding, uniformity, stateless per-image seeds."""

import numpy as np
import tensorflow as tf

from kmask.ops.sampling import sample_balanced


def test_proportions_and_order():
    tf.random.set_seed(0)
    labels = np.full((2, 1000), 0, np.int32)
    labels[0, :300] = 1  # plenty of positives: capped at 64 of 256 (25%)
    labels[0, 300:400] = -1
    labels[1, :10] = 1  # few positives: all taken, negatives fill up
    indices, sampled = sample_balanced(labels, 256, 0.25)
    indices, sampled = indices.numpy(), sampled.numpy()
    assert indices.shape == sampled.shape == (2, 256)
    np.testing.assert_array_equal(sampled[0], [1] * 64 + [0] * 192)
    np.testing.assert_array_equal(sampled[1], [1] * 10 + [0] * 246)
    for b in range(2):
        np.testing.assert_array_equal(labels[b, indices[b]], sampled[b])  # labels agree
        assert len(set(indices[b])) == 256  # no duplicates
    assert (labels[0, indices[0]] != -1).all()


def test_padding_when_not_enough_rows():
    labels = np.array([[1, 0, -1, -1, 0, 1, 1]], np.int32)
    indices, sampled = sample_balanced(labels, 10, 0.5)
    indices, sampled = indices.numpy()[0], sampled.numpy()[0]
    np.testing.assert_array_equal(sampled, [1, 1, 1, 0, 0, -1, -1, -1, -1, -1])
    assert sorted(indices[:3]) == [0, 5, 6] and sorted(indices[3:5]) == [1, 4]
    np.testing.assert_array_equal(indices[5:], 0)


def test_all_negative_image():
    labels = np.zeros((1, 50), np.int32)
    _, sampled = sample_balanced(labels, 8, 0.5)
    np.testing.assert_array_equal(sampled.numpy(), [[0] * 8])


def test_positives_are_drawn_uniformly():
    tf.random.set_seed(1)
    labels = np.ones((1, 20), np.int32)
    counts = np.zeros(20)
    for _ in range(200):
        indices, _ = sample_balanced(labels, 8, 0.5)  # 4 of 20 positives each time
        counts[indices.numpy()[0, :4]] += 1
    # Each row is expected 200 * 4 / 20 = 40 times; a sampler stuck on a subset fails.
    assert counts.min() > 15 and counts.max() < 70


def test_seeded_sampling_is_a_function_of_each_images_seed():
    labels = np.zeros((3, 500), np.int32)
    labels[:, :100] = 1
    seeds = np.array([5, 6, 5], np.int64)

    def sample(seeds, salt=2):
        return sample_balanced(labels, 32, 0.25, seeds, salt)[0].numpy()

    first = sample(seeds)
    tf.random.uniform([7])  # stateful draws in between change nothing
    np.testing.assert_array_equal(sample(seeds), first)
    np.testing.assert_array_equal(first[0], first[2])  # same seed, same labels, same sample
    assert not np.array_equal(first[0], first[1])
    # Image 0's sample does not depend on the other images of the batch.
    np.testing.assert_array_equal(sample(np.array([5, 9, 1], np.int64))[0], first[0])
    assert not np.array_equal(sample(seeds, salt=3)[0], first[0])


def test_seeded_positives_are_drawn_uniformly():
    labels = np.ones((200, 20), np.int32)
    indices, _ = sample_balanced(labels, 8, 0.5, np.arange(200, dtype=np.int64), 2)
    counts = np.bincount(indices.numpy()[:, :4].ravel(), minlength=20)
    assert counts.min() > 15 and counts.max() < 70
