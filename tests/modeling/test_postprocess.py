"""Box-branch inference on hand-built head outputs."""

import math

import numpy as np
import tensorflow as tf

from kmask.modeling.roi_heads.postprocess import Postprocess
from tests.keras_harness import assert_round_trip


def _logits(probabilities):
    return np.log(np.asarray(probabilities, np.float32))


def test_decoding_thresholds_per_class_nms_and_ordering():
    proposals = np.array(
        [[[10, 10, 50, 50], [12, 10, 50, 52], [60, 60, 100, 100], [0, 0, 20, 20], [5, 5, 9, 9]]],
        np.float32,
    )
    valid = np.array([[True, True, True, True, False]])
    # Columns: background, class 0, class 1.
    probabilities = [
        [0.1, 0.8, 0.1],  # class 0 wins, 0.1 for class 1 also survives the 0.05 threshold
        [0.21, 0.7, 0.09],  # overlaps proposal 0 (IoU 0.9): suppressed for class 0 and class 1
        [0.05, 0.04, 0.91],  # class 0 score 0.04 is below the threshold
        [0.9, 0.06, 0.04],
        [0.0001, 0.9998, 0.0001],  # invalid proposal: ignored
    ]
    logits = _logits(probabilities)[None]
    deltas = np.zeros((1, 5, 2, 4), np.float32)
    deltas[0, 2, 1] = [10 * 0.25, 0, 5 * math.log(2.0), 0]  # class 1: down 10 px, 2x height
    deltas[0, 3, 0] = [-10, 0, 0, 0]  # class 0: up 20 px, leaves the image -> clipped
    layer = Postprocess(score_threshold=0.05, nms_threshold=0.5, detections_per_image=4)
    out = {
        k: v.numpy()
        for k, v in layer(logits, deltas, proposals, valid, np.array([[96, 128]])).items()
    }
    assert out["num_detections"][0] == 4
    np.testing.assert_allclose(out["detection_scores"][0], [0.91, 0.8, 0.1, 0.06], rtol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"][0], [1, 0, 1, 0])
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [50, 60, 96, 100], atol=1e-4)
    np.testing.assert_allclose(out["detection_boxes"][0, 1], [10, 10, 50, 50], atol=1e-4)
    np.testing.assert_allclose(out["detection_boxes"][0, 2], [10, 10, 50, 50], atol=1e-4)
    np.testing.assert_allclose(out["detection_boxes"][0, 3], [0, 0, 0, 20], atol=1e-4)
    assert out["detection_classes"].dtype == np.int32


def test_padding_and_empty_images():
    layer = Postprocess(detections_per_image=3)
    logits = np.zeros((2, 2, 3), np.float32)
    logits[:, :, 0] = 10.0  # background everywhere: nothing passes 0.05
    inputs = (
        logits,
        np.zeros((2, 2, 2, 4), np.float32),
        np.tile(np.array([[[0, 0, 10, 10]]], np.float32), (2, 2, 1)),
        np.ones((2, 2), bool),
        np.full((2, 2), 32),
    )
    out = layer(*inputs)
    np.testing.assert_array_equal(out["num_detections"].numpy(), [0, 0])
    np.testing.assert_array_equal(out["detection_boxes"].numpy(), 0)
    assert out["detection_boxes"].shape == (2, 3, 4)
    shapes = layer.compute_output_shape((2, 2, 3))
    assert shapes["detection_boxes"] == (2, 3, 4) and shapes["num_detections"] == (2,)
    assert_round_trip(layer, *inputs)
    assert not layer.supports_jit


def test_traces_with_dynamic_shapes():
    layer = Postprocess(detections_per_image=7)
    fn = tf.function(
        layer.call,
        input_signature=[
            tf.TensorSpec([None, None, 4]),
            tf.TensorSpec([None, None, 3, 4]),
            tf.TensorSpec([None, None, 4]),
            tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([None, 2], tf.int32),
        ],
    )
    out = fn(
        tf.zeros([1, 5, 4]),
        tf.zeros([1, 5, 3, 4]),
        tf.zeros([1, 5, 4]),
        tf.ones([1, 5], tf.bool),
        tf.fill([1, 2], 10),
    )
    assert out["detection_scores"].shape == (1, 7)


def test_min_box_size_drops_boxes_clipped_to_nothing():
    """torchvision drops detections under 1e-2 px after clipping; 0 keeps them
    (detectron2)."""
    proposals = np.array([[[10, 10, 50, 50], [0, 0, 20, 20]]], np.float32)
    logits = _logits([[0.1, 0.9], [0.2, 0.8]])[None]
    deltas = np.zeros((1, 2, 1, 4), np.float32)
    deltas[0, 1, 0] = [-10, 0, 0, 0]  # up 20 px: clipped to height 0
    inputs = (logits, deltas, proposals, np.ones((1, 2), bool), np.array([[96, 128]]))
    kept = Postprocess(detections_per_image=2)(*inputs)
    dropped = Postprocess(detections_per_image=2, min_box_size=1e-2)(*inputs)
    assert int(kept["num_detections"][0]) == 2
    assert int(dropped["num_detections"][0]) == 1
    np.testing.assert_allclose(dropped["detection_boxes"][0, 0], [10, 10, 50, 50], atol=1e-4)
