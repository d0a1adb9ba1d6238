"""Per-class batched NMS against a NumPy greedy NMS."""

import numpy as np
import pytest

from kmask.ops.nms import NMS_IMPLEMENTATIONS, batched_multiclass_nms, nms_implementation


def _iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _greedy(boxes, scores, iou_threshold, score_threshold):
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    kept = []
    for i in order:
        if all(_iou(boxes[i], boxes[j]) <= iou_threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("implementation", NMS_IMPLEMENTATIONS)
def test_matches_numpy_greedy_per_class(rng, implementation):
    batch, num, classes = 2, 60, 3
    yx = rng.uniform(0, 100, (batch, num, classes, 2))
    hw = rng.uniform(10, 40, (batch, num, classes, 2))
    boxes = np.concatenate([yx, yx + hw], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, num, classes)).astype(np.float32)
    with nms_implementation(implementation):
        outputs = batched_multiclass_nms(boxes, scores, 20, 30, 0.5, 0.3)
    out_boxes, out_scores, out_classes, num_valid = [t.numpy() for t in outputs]
    assert out_boxes.shape == (batch, 30, 4) and out_classes.dtype == np.int32
    for b in range(batch):
        expected = []
        for c in range(classes):
            kept = _greedy(boxes[b, :, c], scores[b, :, c], 0.5, 0.3)[:20]
            expected += [(scores[b, i, c], c, tuple(boxes[b, i, c])) for i in kept]
        expected = sorted(expected, key=lambda e: -e[0])[:30]
        assert num_valid[b] == len(expected)
        np.testing.assert_allclose(out_scores[b, : num_valid[b]], [e[0] for e in expected])
        np.testing.assert_array_equal(out_classes[b, : num_valid[b]], [e[1] for e in expected])
        np.testing.assert_allclose(out_boxes[b, : num_valid[b]], [e[2] for e in expected])
        np.testing.assert_array_equal(out_scores[b, num_valid[b] :], 0)


@pytest.mark.parametrize("implementation", NMS_IMPLEMENTATIONS)
def test_shared_boxes_and_empty_input(implementation):
    boxes = np.array([[[[0, 0, 10, 10]], [[1, 1, 10, 10]], [[50, 50, 60, 60]]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.8, 0.7], [0.0, 0.0]]], np.float32)
    with nms_implementation(implementation):
        outputs = batched_multiclass_nms(boxes, scores, 5, 5, 0.5, 0.0)
        empty = batched_multiclass_nms(
            np.zeros((1, 0, 1, 4), np.float32), np.zeros((1, 0, 2), np.float32), 5, 5, 0.5, 0.0
        )
    out_boxes, out_scores, out_classes, num_valid = [t.numpy() for t in outputs]
    np.testing.assert_array_equal(out_boxes[0, :2], [[0, 0, 10, 10], [1, 1, 10, 10]])
    assert num_valid[0] == 2  # class 0 suppresses box 1; class 1 keeps it
    np.testing.assert_allclose(out_scores[0, :2], [0.9, 0.7])
    np.testing.assert_array_equal(out_classes[0, :2], [0, 1])
    assert empty[3].numpy()[0] == 0 and empty[0].shape == (1, 5, 4)


def test_single_class_needs_static_shapes():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 1, 4]), tf.TensorSpec([None, 4, 2])])
    def dynamic_batch(boxes, scores):
        return batched_multiclass_nms(boxes, scores, 5, 5, 0.5, 0.0)

    with nms_implementation("single_class"), pytest.raises(ValueError, match="static batch"):
        dynamic_batch.get_concrete_function()
    with (
        pytest.raises(ValueError, match="nms implementation must be one of"),
        nms_implementation("fused"),
    ):
        pass
