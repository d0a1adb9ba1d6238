"""The stages' loss terms against NumPy, the empty-ground-truth case and the mask decoupling."""

import numpy as np
import pytest
import tensorflow as tf

from kmask.ops.losses import fast_rcnn_losses, mask_loss, rpn_losses, smooth_l1

LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")


def _np_smooth_l1(x, beta):
    x = np.abs(x)
    return np.where(x < beta, 0.5 * x**2 / beta, x - 0.5 * beta) if beta > 0 else x


def _bce(logits, labels):
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def _outputs(rng, empty=False):
    b, a, s, q, m, k = 2, 12, 10, 4, 6, 3
    rpn_labels = rng.choice([1, 0, -1], size=(b, a)).astype(np.int32)
    class_targets = rng.integers(-1, k + 1, size=(b, s)).astype(np.int32)
    mask_classes = rng.integers(-1, k, size=(b, q)).astype(np.int32)
    if empty:
        rpn_labels[rpn_labels == 1] = 0
        class_targets[class_targets > 0] = 0
        mask_classes[:] = -1
    return {
        "rpn_logits": rng.normal(size=(b, a)).astype(np.float32),
        "rpn_labels": rpn_labels,
        "rpn_deltas": rng.normal(size=(b, a, 4)).astype(np.float32),
        "rpn_box_targets": np.where(
            (rpn_labels == 1)[..., None], rng.normal(size=(b, a, 4)), 0
        ).astype(np.float32),
        "class_logits": rng.normal(size=(b, s, k + 1)).astype(np.float32),
        "class_targets": class_targets,
        "box_deltas": rng.normal(size=(b, s, k, 4)).astype(np.float32),
        "box_targets": rng.normal(size=(b, s, 4)).astype(np.float32),
        "mask_logits": rng.normal(size=(b, q, m, m, k)).astype(np.float32),
        "mask_targets": rng.integers(0, 2, size=(b, q, m, m)).astype(np.float32),
        "mask_classes": mask_classes,
    }


def _reference(o, rpn_beta, box_beta):
    sampled = o["rpn_labels"] >= 0
    n = max(sampled.sum(), 1)
    rpn_cls = _bce(o["rpn_logits"], o["rpn_labels"] == 1)[sampled].sum() / n
    pos = o["rpn_labels"] == 1
    rpn_box = _np_smooth_l1(o["rpn_deltas"] - o["rpn_box_targets"], rpn_beta)[pos].sum() / n
    t = o["class_targets"]
    rois = t >= 0
    logits = o["class_logits"]
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, np.maximum(t, 0)[..., None], -1)[..., 0]
    cls = ce[rois].sum() / max(rois.sum(), 1)
    box = 0.0
    for b, s in zip(*np.nonzero(t > 0)):
        box += _np_smooth_l1(
            o["box_deltas"][b, s, t[b, s] - 1] - o["box_targets"][b, s], box_beta
        ).sum()
    box /= max(rois.sum(), 1)
    mask, count = 0.0, 0
    for b, q in zip(*np.nonzero(o["mask_classes"] >= 0)):
        logit = o["mask_logits"][b, q, :, :, o["mask_classes"][b, q]]
        mask += _bce(logit, o["mask_targets"][b, q]).sum()
        count += logit.size
    mask /= max(count, 1)
    return {
        "loss_rpn_cls": rpn_cls,
        "loss_rpn_box": rpn_box,
        "loss_cls": cls,
        "loss_box": box,
        "loss_mask": mask,
    }


def _losses(o, rpn_beta=1 / 9, box_beta=1.0):
    rpn_cls, rpn_box = rpn_losses(
        o["rpn_logits"], o["rpn_labels"], o["rpn_deltas"], o["rpn_box_targets"], rpn_beta
    )
    cls, box = fast_rcnn_losses(
        o["class_logits"], o["box_deltas"], o["class_targets"], o["box_targets"], box_beta
    )
    mask = mask_loss(o["mask_logits"], o["mask_targets"], o["mask_classes"])
    return dict(zip(LOSS_KEYS, (rpn_cls, rpn_box, cls, box, mask)))


def test_smooth_l1_values():
    x = tf.constant([-2.0, -0.5, 0.0, 0.05, 3.0])
    np.testing.assert_allclose(
        smooth_l1(x, 1.0).numpy(), [1.5, 0.125, 0.0, 0.00125, 2.5], rtol=1e-6
    )
    np.testing.assert_allclose(smooth_l1(x, 0.0).numpy(), np.abs(x.numpy()))


@pytest.mark.parametrize("rpn_beta, box_beta", [(1.0, 1.0), (1 / 9, 0.0)])
def test_losses_match_numpy(rng, rpn_beta, box_beta):
    outputs = _outputs(rng)
    losses = _losses(outputs, rpn_beta, box_beta)
    expected = _reference(outputs, rpn_beta, box_beta)
    for key in LOSS_KEYS:
        assert losses[key].dtype == tf.float32 and losses[key].shape == ()
        np.testing.assert_allclose(losses[key].numpy(), expected[key], rtol=1e-5, err_msg=key)


def test_no_foreground_gives_exact_zero_box_and_mask_losses(rng):
    outputs = _outputs(rng, empty=True)
    outputs["mask_logits"][:] = np.inf  # not even non-finite logits may leak in
    outputs["box_deltas"][:] = np.nan
    losses = _losses(outputs)
    assert np.isfinite(losses["loss_rpn_cls"].numpy()) and losses["loss_rpn_cls"].numpy() > 0
    for key in ("loss_rpn_box", "loss_box", "loss_mask"):
        assert losses[key].numpy() == 0.0, key


def test_mask_loss_trains_only_the_ground_truth_class_channel(rng):
    outputs = _outputs(rng)
    logits = tf.Variable(outputs["mask_logits"])
    with tf.GradientTape() as tape:
        loss = mask_loss(logits, outputs["mask_targets"], outputs["mask_classes"])
    grad = tape.gradient(loss, logits).numpy()
    classes = outputs["mask_classes"]
    expected_nonzero = np.zeros(grad.shape, bool)
    for b, q in zip(*np.nonzero(classes >= 0)):
        expected_nonzero[b, q, :, :, classes[b, q]] = True
    assert (grad[~expected_nonzero] == 0).all()
    assert (grad[expected_nonzero] != 0).all()
