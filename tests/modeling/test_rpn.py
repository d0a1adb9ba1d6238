"""RPN head, proposal generation and RPN targets."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.modeling.proposals.proposal_generator import ProposalGenerator
from kmask.modeling.proposals.rpn import RPN
from kmask.modeling.proposals.rpn_head import RPNHead
from kmask.modeling.proposals.rpn_target_assigner import RPNTargetAssigner
from tests.keras_harness import assert_mixed_precision, assert_round_trip


def _np_iou(a, b):
    ih = np.maximum(
        0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    )
    iw = np.maximum(
        0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    )
    inter = ih * iw
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _np_decode(deltas, anchors):
    h, w = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cy, cx = anchors[:, 0] + h / 2, anchors[:, 1] + w / 2
    cy, cx = cy + deltas[:, 0] * h, cx + deltas[:, 1] * w
    h = h * np.exp(np.minimum(deltas[:, 2], math.log(1000 / 16)))
    w = w * np.exp(np.minimum(deltas[:, 3], math.log(1000 / 16)))
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)


def test_rpn_head_parameters_sharing_and_layout():
    head = RPNHead(num_anchors=3)
    features = {f"P{k}": tf.random.normal([2, 128 // 2**k, 64 // 2**k, 256]) for k in range(2, 7)}
    objectness, deltas = head(features)
    # One head for all levels: 3x3 conv + 1x1 objectness + 1x1 deltas (torchvision: 593,935).
    assert head.count_params() == (9 * 256 * 256 + 256) + (256 * 3 + 3) + (256 * 12 + 12)
    assert head.count_params() == 593_935
    for k in range(2, 7):
        h, w = 128 // 2**k, 64 // 2**k
        assert objectness[f"P{k}"].shape == (2, h * w * 3)
        assert deltas[f"P{k}"].shape == (2, h * w * 3, 4)
    # Layout (row, column, anchor): compare with the convolutions applied by hand.
    hidden = head.conv(features["P3"])
    logits = head.objectness(hidden).numpy()  # [2, 16, 8, 3]
    boxes = head.deltas(hidden).numpy().reshape(2, 16, 8, 3, 4)
    np.testing.assert_allclose(
        objectness["P3"].numpy()[1, (5 * 8 + 4) * 3 + 2], logits[1, 5, 4, 2], rtol=1e-5
    )
    np.testing.assert_allclose(
        deltas["P3"].numpy()[1, (5 * 8 + 4) * 3 + 2], boxes[1, 5, 4, 2], rtol=1e-5
    )
    assert_round_trip(head, features)
    shapes = head.compute_output_shape({k: tuple(v.shape) for k, v in features.items()})
    assert shapes[0]["P2"] == (2, 32 * 16 * 3) and shapes[1]["P6"] == (2, 2 * 1 * 3, 4)


def test_rpn_head_mixed_precision_outputs_float32():
    # The convs compute in the half dtype; objectness and deltas come out float32.
    assert_mixed_precision(lambda: RPNHead(num_anchors=3), {"P2": tf.random.normal([1, 4, 4, 8])})


def _reference_proposals(objectness, deltas, anchors, size, pre, post, nms, min_size):
    boxes_all, scores_all, levels_all = [], [], []
    for level, key in enumerate(sorted(objectness)):
        order = np.argsort(-objectness[key], kind="stable")[:pre]
        boxes = _np_decode(deltas[key][order], anchors[key][order])
        boxes = np.clip(boxes, 0, [size[0], size[1], size[0], size[1]])
        keep = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
        boxes_all.append(boxes[keep])
        scores_all.append(1 / (1 + np.exp(-objectness[key][order][keep])))
        levels_all.append(np.full(keep.sum(), level))
    boxes, scores, levels = map(np.concatenate, (boxes_all, scores_all, levels_all))
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        same = [j for j in kept if levels[j] == levels[i]]
        if not same or _np_iou(boxes[i : i + 1], boxes[same]).max() <= nms:
            kept.append(i)
    return boxes[kept[:post]], scores[kept[:post]]


def test_proposals_match_numpy_reference(rng):
    counts = {"P2": 40, "P3": 12, "P4": 3}
    anchors, objectness, deltas = {}, {}, {}
    for key, n in counts.items():
        yx = rng.uniform(-10, 90, (n, 2))
        hw = rng.uniform(4, 50, (n, 2))
        anchors[key] = np.concatenate([yx, yx + hw], 1).astype(np.float32)
        objectness[key] = rng.normal(size=(2, n)).astype(np.float32)
        deltas[key] = rng.normal(scale=0.3, size=(2, n, 4)).astype(np.float32)
    size = np.array([[80, 100], [60, 70]], np.int32)
    layer = ProposalGenerator(
        pre_nms_topk_test=10, post_nms_topk_test=15, nms_threshold=0.5, min_box_size=2.0
    )
    boxes, scores, valid = [t.numpy() for t in layer(objectness, deltas, anchors, size)]
    assert boxes.shape == (2, 15, 4) and valid.dtype == bool
    for b in range(2):
        expected_boxes, expected_scores = _reference_proposals(
            {k: v[b] for k, v in objectness.items()},
            {k: v[b] for k, v in deltas.items()},
            anchors,
            size[b],
            10,
            15,
            0.5,
            2.0,
        )
        n = len(expected_scores)
        assert valid[b].sum() == n and valid[b, :n].all()
        np.testing.assert_allclose(scores[b, :n], expected_scores, rtol=1e-5)
        np.testing.assert_allclose(boxes[b, :n], expected_boxes, rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(boxes[b, n:], 0)


def test_proposals_train_test_counts_and_static_shapes():
    layer = ProposalGenerator(
        pre_nms_topk_train=50, pre_nms_topk_test=20, post_nms_topk_train=30, post_nms_topk_test=10
    )
    anchors = {"P2": tf.constant(np.tile([[0, 0, 8, 8]], (64, 1)), tf.float32)}
    spec = {"P2": tf.TensorSpec([None, None])}, {"P2": tf.TensorSpec([None, None, 4])}

    @tf.function(
        input_signature=[
            *spec,
            {"P2": tf.TensorSpec([None, 4])},
            tf.TensorSpec([None, 2], tf.int32),
        ]
    )
    def run(objectness, deltas, anchors, size):
        return layer(objectness, deltas, anchors, size, training=True)[0], layer(
            objectness, deltas, anchors, size, training=False
        )[0]

    inputs = ({"P2": tf.zeros([3, 64])}, {"P2": tf.zeros([3, 64, 4])}, anchors, tf.fill([3, 2], 32))
    train, test = run(*inputs)
    assert train.shape == (3, 30, 4) and test.shape == (3, 10, 4)
    assert_round_trip(layer, *inputs)
    assert not layer.supports_jit


def test_rpn_targets_follow_the_anchor_rule(rng):
    tf.random.set_seed(3)
    yx = rng.uniform(0, 100, (400, 2))
    anchors = np.concatenate([yx, yx + rng.uniform(8, 60, (400, 2))], 1).astype(np.float32)
    gt = np.zeros((2, 3, 4), np.float32)
    gt[0, :2] = [[10, 10, 50, 60], [60, 20, 90, 50]]
    classes = np.array([[0, 4, -1], [-1, -1, -1]], np.int32)
    layer = RPNTargetAssigner(batch_size_per_image=64, positive_fraction=0.5)
    indices, labels, targets = [t.numpy() for t in layer(anchors, gt, classes)]
    iou = _np_iou(anchors, gt[0, :2])
    best = iou.max(1)
    positive = (best >= 0.7) | (iou == iou.max(0)).any(1)
    negative = ~positive & (best < 0.3)
    chosen, lab = indices[0], labels[0]
    assert ((lab == 1) == positive[chosen]).all() and ((lab == 0) == negative[chosen]).all()
    assert (lab == 1).sum() == min(positive.sum(), 32) and (lab >= 0).sum() == 64
    for i, a in zip(chosen[lab == 1], targets[0][lab == 1]):
        g = gt[0, np.argmax(iou[i])]
        ah, aw = anchors[i, 2] - anchors[i, 0], anchors[i, 3] - anchors[i, 1]
        gh, gw = g[2] - g[0], g[3] - g[1]
        expected = [
            ((g[0] + g[2]) - (anchors[i, 0] + anchors[i, 2])) / 2 / ah,
            ((g[1] + g[3]) - (anchors[i, 1] + anchors[i, 3])) / 2 / aw,
            np.log(gh / ah),
            np.log(gw / aw),
        ]
        np.testing.assert_allclose(a, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(targets[0][lab != 1], 0)
    # No ground truth: 64 negatives, zero targets.
    np.testing.assert_array_equal(labels[1], 0)
    np.testing.assert_array_equal(targets[1], 0)
    assert_round_trip(layer)  # config only: the call samples at random


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_proposals_stay_float32_with_half_precision_inputs(policy):
    dtype = keras.mixed_precision.Policy(policy).compute_dtype
    layer = ProposalGenerator(pre_nms_topk_test=5, post_nms_topk_test=5)
    anchors = {"P2": tf.constant([[1000.0, 1000.0, 1100.0, 1100.0]] * 4)}
    out = layer(
        {"P2": tf.ones([1, 4], dtype)},
        {"P2": tf.zeros([1, 4, 4], dtype)},
        anchors,
        tf.constant([[2048, 2048]]),
    )
    assert out[0].dtype == tf.float32
    np.testing.assert_array_equal(out[0].numpy()[0, 0], [1000, 1000, 1100, 1100])


def test_rpn_stage_owns_anchors_head_proposals_and_losses():
    tf.random.set_seed(0)
    stage = RPN(
        anchor_sizes=(16.0, 32.0),
        num_conv=2,
        batch_size_per_image=32,
        post_nms_topk_train=20,
        post_nms_topk_test=10,
    )
    features = {"P2": tf.random.normal([2, 16, 16, 8]), "P3": tf.random.normal([2, 8, 8, 8])}
    size = tf.constant([[64, 64], [64, 48]])
    proposals, losses = stage(features, size)
    assert losses == {} and proposals["proposals"].shape == (2, 10, 4)
    # The head's anchor count comes from the anchor generator: 3 ratios.
    assert stage.head.num_anchors == stage.anchor_generator.num_anchors_per_location == 3
    # torchvision's v2 RPN head (two 3x3 convs): 2 * (9 * C * C + C) + (C * 3 + 3) + (C * 12 + 12).
    assert stage.head.count_params() == 2 * (9 * 8 * 8 + 8) + (8 * 3 + 3) + (8 * 12 + 12)
    gt_boxes = tf.constant([[[4.0, 4.0, 30.0, 40.0]], [[0.0, 0.0, 0.0, 0.0]]])
    gt_classes = tf.constant([[0], [-1]])
    targets = {"gt_boxes": gt_boxes, "gt_classes": gt_classes}
    proposals, losses = stage(features, size, targets, training=True)
    assert proposals["proposals"].shape == (2, 20, 4)
    assert set(losses) == set(RPN.loss_names)
    assert np.isfinite(losses["loss_rpn_cls"].numpy()) and losses["loss_rpn_box"].numpy() > 0
    # No ground truth at all: the box loss is exactly zero.
    no_gt = {"gt_boxes": tf.zeros([2, 1, 4]), "gt_classes": tf.fill([2, 1], -1)}
    _, empty = stage(features, size, no_gt, training=True)
    assert empty["loss_rpn_box"].numpy() == 0.0
    assert_round_trip(stage, features, size)
    assert stage.get_config()["smooth_l1_beta"] == pytest.approx(1 / 9)
