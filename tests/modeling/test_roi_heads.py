"""RoI sampling, box / mask heads, level assignment, and the ROIHeads layer."""

import numpy as np
import tensorflow as tf

from kmask.modeling.roi_heads.box_head import BoxHead
from kmask.modeling.roi_heads.mask_head import MaskHead
from kmask.modeling.roi_heads.roi_heads import ROIHeads
from kmask.modeling.roi_heads.roi_sampler import ROISampler
from kmask.ops.roi_align import assign_levels
from tests.keras_harness import assert_round_trip


def _box_with_scale(scale: float) -> list[float]:
    return [10.0, 20.0, 10.0 + scale, 20.0 + scale]


def test_level_assignment_boundaries():
    scales = [8, 111.9, 112, 223.9, 224, 447.9, 448, 2000]
    boxes = np.array([_box_with_scale(s) for s in scales], np.float32)
    levels = assign_levels(boxes, 2, 5).numpy()
    np.testing.assert_array_equal(levels, [2, 2, 3, 3, 4, 4, 5, 5])
    # Non-square: sqrt(w h) decides (56 x 224 -> sqrt = 112 -> level 3).
    np.testing.assert_array_equal(assign_levels(np.array([[0, 0, 56, 224]], np.float32), 2, 5), [3])


def _pyramid(batch=2, channels=256, size=64):
    return {
        f"P{k}": tf.random.normal([batch, size // 2**k, size // 2**k, channels])
        for k in range(2, 7)
    }


def test_box_head_parameters_and_outputs():
    head = BoxHead(num_classes=80, roi_align_implementation="tf")
    pyramid, rois = _pyramid(), tf.constant([[[0, 0, 20, 20]] * 3] * 2, tf.float32)
    class_logits, deltas = head(pyramid, rois)
    assert class_logits.shape == (2, 3, 81) and deltas.shape == (2, 3, 80, 4)
    fc = (7 * 7 * 256 * 1024 + 1024) + (1024 * 1024 + 1024)
    assert head.count_params() == fc + 1024 * 81 + 81 + 1024 * 320 + 320
    assert_round_trip(head, pyramid, rois)


def test_box_head_v2_variant_has_torchvision_v2_parameter_count():
    # torchvision FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=BatchNorm2d):
    # convs without bias, BN affine weights, one fc; predictor with background deltas.
    head = BoxHead(
        90,
        num_conv=4,
        norm="bn",
        num_fc=1,
        predict_background=True,
        roi_align_implementation="tf",
    )
    _, deltas = head(_pyramid(1), tf.constant([[[0, 0, 20, 20]]], tf.float32))
    assert deltas.shape == (1, 1, 90, 4)
    kernels = 4 * 9 * 256 * 256 + (7 * 7 * 256 * 1024 + 1024) + 1024 * 91 + 91 + 1024 * 364 + 364
    bn = 4 * 4 * 256  # gamma, beta, moving mean, moving variance
    assert head.count_params() == kernels + bn


def test_mask_head_parameters_and_outputs():
    head = MaskHead(num_classes=80, roi_align_implementation="tf")
    pyramid, rois = _pyramid(), tf.constant([[[0, 0, 20, 20]] * 3] * 2, tf.float32)
    logits = head(pyramid, rois)
    assert logits.shape == (2, 3, 28, 28, 80) and logits.dtype == tf.float32
    convs = 4 * (9 * 256 * 256 + 256) + (4 * 256 * 256 + 256)
    assert head.count_params() == convs + 256 * 80 + 80
    assert head.output_size == 28
    assert head.compute_output_shape({}, (2, 3, 4)) == (2, 3, 28, 28, 80)
    assert_round_trip(head, pyramid, rois)


def test_roi_sampler_adds_ground_truth_and_builds_targets():
    tf.random.set_seed(0)
    proposals = np.zeros((1, 6, 4), np.float32)
    proposals[0, :4] = [[10, 10, 50, 50], [12, 10, 50, 52], [100, 100, 120, 140], [0, 0, 5, 5]]
    valid = np.array([[True, True, True, True, False, False]])
    gt = np.array([[[10, 10, 50, 50], [100, 100, 120, 120], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[3, 0, -1]], np.int32)
    sampler = ROISampler(batch_size_per_image=8, positive_fraction=0.5)
    out = {k: v.numpy() for k, v in sampler(proposals, valid, gt, classes).items()}
    # Foreground: proposals 0, 1 (IoU 1, 0.9 with gt 0), proposal 2 (IoU 0.5 with gt 1) and
    # the two added gt boxes = 5 candidates, capped at 4; then background (proposal 3).
    targets = out["class_targets"][0]
    np.testing.assert_array_equal(targets, list(targets[:4]) + [0, -1, -1, -1])
    assert set(targets[:4]) <= {4, 1} and (targets[:4] > 0).all()
    for roi, cls, index in zip(out["rois"][0], targets, out["matched_index"][0]):
        if cls > 0:
            assert classes[0, index] + 1 == cls
            assert _np_iou(roi, gt[0, index]) >= 0.5
    np.testing.assert_array_equal(out["rois"][0, 4], [0, 0, 5, 5])
    np.testing.assert_array_equal(out["rois"][0, 5:], 0)
    assert sampler.max_positives == 4
    assert_round_trip(sampler)  # config only: the call samples at random


def test_roi_sampler_without_ground_truth_samples_background_only():
    proposals = np.tile(np.array([[[0, 0, 10, 10]]], np.float32), (1, 20, 1))
    out = ROISampler(batch_size_per_image=8)(
        proposals,
        np.ones((1, 20), bool),
        np.zeros((1, 3, 4), np.float32),
        -np.ones((1, 3), np.int32),
    )
    np.testing.assert_array_equal(out["class_targets"].numpy(), np.zeros((1, 8)))


def _np_iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _heads(num_classes=3, mask=True):
    pooling = {"roi_align_implementation": "tf"}
    return ROIHeads(
        BoxHead(num_classes, num_fc=1, fc_dim=16, detections_per_image=5, **pooling),
        [MaskHead(num_classes, num_conv=1, conv_dim=8, **pooling)] if mask else [],
        batch_size_per_image=16,
    )


def test_roi_heads_training_losses_and_inference_outputs():
    tf.random.set_seed(0)
    heads = _heads()
    features = _pyramid(channels=8)
    proposals = tf.constant(np.tile([[[4, 4, 30, 30], [30, 30, 60, 50]]], (2, 5, 1)), tf.float32)
    valid = tf.ones([2, 10], tf.bool)
    size = tf.fill([2, 2], 64)
    gt = np.zeros((2, 2, 4), np.float32)
    gt[0, 0] = [4, 4, 30, 30]
    classes = np.array([[2, -1], [-1, -1]], np.int32)
    masks = np.zeros((2, 2, 16, 16), np.uint8)
    masks[0, 0, :, :8] = 1  # left half of its box
    targets = {"gt_boxes": gt, "gt_classes": classes, "gt_masks": masks}
    losses = heads(features, proposals, valid, size, targets=targets)
    assert tuple(losses) == heads.loss_names == ("loss_cls", "loss_box", "loss_mask")
    assert all(np.isfinite(v.numpy()) and v.numpy() > 0 for v in losses.values())
    # Only background in the batch: no box or mask loss at all.
    empty = {**targets, "gt_classes": np.full((2, 2), -1, np.int32)}
    losses = heads(features, proposals, valid, size, targets=empty)
    assert losses["loss_box"].numpy() == 0 and losses["loss_mask"].numpy() == 0
    detections = heads(features, proposals, valid, size)
    assert detections["detection_boxes"].shape == (2, 5, 4)
    assert detections["detection_masks"].shape == (2, 5, 28, 28)
    assert detections["detection_classes"].dtype == tf.int32
    masks = detections["detection_masks"].numpy()
    for b in range(2):
        n = detections["num_detections"].numpy()[b]
        np.testing.assert_array_equal(masks[b, n:], 0)
        assert ((masks[b, :n] > 0) & (masks[b, :n] < 1)).all()
    # Faster R-CNN: no instance heads, no mask output or loss.
    boxes_only = _heads(mask=False)
    assert "detection_masks" not in boxes_only(features, proposals, valid, size)
    assert tuple(boxes_only(features, proposals, valid, size, targets=targets)) == (
        "loss_cls",
        "loss_box",
    )


def test_roi_heads_mask_is_the_predicted_class_channel():
    heads = _heads()
    features = _pyramid(1, channels=8)
    proposals = tf.constant([[[4, 4, 30, 30]]], tf.float32)
    detections = heads(features, proposals, tf.ones([1, 1], tf.bool), tf.fill([1, 2], 64))
    n = detections["num_detections"].numpy()[0]
    assert n >= 1
    logits = heads.instance_heads[0](features, detections["detection_boxes"][:, :n])
    classes = detections["detection_classes"].numpy()[0, :n]
    expected = 1 / (1 + np.exp(-logits.numpy()[0, np.arange(n), :, :, classes]))
    np.testing.assert_allclose(detections["detection_masks"].numpy()[0, :n], expected, rtol=1e-5)


def test_roi_heads_serialization_round_trip():
    heads = _heads()
    features = _pyramid(1, channels=8)
    proposals = tf.constant([[[4, 4, 30, 30], [10, 12, 40, 44]]], tf.float32)
    clone = assert_round_trip(
        heads, features, proposals, tf.ones([1, 2], tf.bool), tf.fill([1, 2], 64)
    )
    assert (
        isinstance(clone.box_head, BoxHead) and clone.box_head.postprocess.detections_per_image == 5
    )
    assert isinstance(clone.instance_heads[0], MaskHead)
    assert not heads.supports_jit
