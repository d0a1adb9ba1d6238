"""The keypoint head alone, inside ROIHeads, and in a whole (tiny) model."""

import json

import keras
import numpy as np
import tensorflow as tf

from kmask.layers.image_normalization import ImageNormalization
from kmask.modeling import FPN, RPN, BoxHead, KeypointHead, MaskHead, MaskRCNN, ROIHeads
from tests.keras_harness import assert_round_trip
from tests.modeling.test_mask_rcnn import TinyBackbone
from tests.toy_data import decoded_example, pipeline_batches, three_shapes

POOLING = {"pooler_levels": (2, 5), "roi_align_implementation": "tf"}
NUM_KEYPOINTS = 3


def _pyramid(batch=1, channels=16, size=128):
    return {
        f"P{k}": tf.random.normal([batch, size // 2**k, size // 2**k, channels])
        for k in range(2, 7)
    }


def test_paper_head_parameters():
    head = KeypointHead(17, **POOLING)
    head.build({"P2": (None, None, None, 256)})
    convs = (9 * 256 * 512 + 512) + 7 * (9 * 512 * 512 + 512)
    assert head.count_params() == convs + 16 * 512 * 17 + 17
    assert head.output_size == 56
    assert head.compute_output_shape({}, (2, 3, 4)) == (2, 3, 56, 56, 17)


def test_small_head_outputs_and_round_trip():
    head = KeypointHead(NUM_KEYPOINTS, num_conv=2, conv_dim=8, **POOLING)
    pyramid, rois = _pyramid(2), tf.constant([[[0, 0, 40, 30]] * 3] * 2, tf.float32)
    logits = head(pyramid, rois)
    assert logits.shape == (2, 3, 56, 56, NUM_KEYPOINTS) and logits.dtype == tf.float32
    assert_round_trip(head, pyramid, rois)


def _keypoints(visibility: int) -> np.ndarray:
    """Keypoints (x, y, v) of the three shapes of ``three_shapes``: at their centres."""
    centres = [(40, 36), (94, 40), (100, 80)]
    keypoints = np.zeros((3, NUM_KEYPOINTS, 3), np.float32)
    for i, (y, x) in enumerate(centres):
        for k in range(NUM_KEYPOINTS):
            keypoints[i, k] = (x - 2 * k, y + 3 * k, visibility)
    return keypoints


def _example(visibility: int, image_id: int = 0) -> dict:
    masks, classes, image = three_shapes()
    example = decoded_example(image, masks, classes, image_id)
    example["keypoints"] = _keypoints(visibility)
    return example


def tiny_keypoint_model(mask_head: bool = True) -> MaskRCNN:
    """Keypoint (and mask) R-CNN on ``TinyBackbone`` with narrow heads."""
    heads = [KeypointHead(NUM_KEYPOINTS, num_conv=2, conv_dim=8, **POOLING)]
    if mask_head:
        heads.insert(0, MaskHead(3, num_conv=1, conv_dim=8, **POOLING))
    return MaskRCNN(
        normalizer=ImageNormalization("RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        backbone=TinyBackbone(8),
        fpn=FPN(16),
        rpn=RPN(
            pre_nms_topk_train=200,
            pre_nms_topk_test=200,
            post_nms_topk_train=64,
            post_nms_topk_test=64,
        ),
        roi_heads=ROIHeads(BoxHead(3, fc_dim=32, **POOLING), heads, batch_size_per_image=32),
    )


def _losses_and_gradients(model, features, targets):
    with tf.GradientTape() as tape:
        losses = model({**features, **targets}, training=True)
        total = tf.add_n(list(losses.values()))
    return losses, tape.gradient(total, model.trainable_variables)


def test_losses_with_visible_and_without_visible_keypoints():
    keras.utils.set_random_seed(0)
    model = tiny_keypoint_model()
    assert model.loss_names[-2:] == ("loss_mask", "loss_keypoint")
    features, targets = next(iter(pipeline_batches([_example(2)])))
    assert targets["gt_keypoints"].shape == (1, 100, NUM_KEYPOINTS, 3)
    losses, gradients = _losses_and_gradients(model, features, targets)
    # Random 56x56 heatmaps: the cross-entropy is near log(56^2).
    assert abs(losses["loss_keypoint"].numpy() - np.log(56 * 56)) < 1.0
    assert all(g is None or np.isfinite(g.numpy()).all() for g in gradients)
    # People without any labelled keypoint (v = 0): zero loss, finite gradients.
    features, targets = next(iter(pipeline_batches([_example(0)])))
    losses, gradients = _losses_and_gradients(model, features, targets)
    assert losses["loss_keypoint"].numpy() == 0.0
    assert losses["loss_mask"].numpy() > 0.0
    assert all(g is None or np.isfinite(g.numpy()).all() for g in gradients)


def test_fixed_normalizer_divides_by_all_slots():
    keras.utils.set_random_seed(1)
    pyramid = _pyramid(1)
    rois = tf.constant([[[20, 20, 60, 60], [0, 0, 10, 10]]], tf.float32)
    targets = {"gt_keypoints": tf.constant([[[[30, 30, 2], [50, 40, 1], [0, 0, 0]]]])}
    args = (pyramid, rois, tf.constant([[0, 0]]), tf.constant([[0, 0]]), targets)
    visible = KeypointHead(NUM_KEYPOINTS, num_conv=1, conv_dim=8, **POOLING)
    fixed = KeypointHead(
        NUM_KEYPOINTS, num_conv=1, conv_dim=8, normalize_by_visible_keypoints=False, **POOLING
    )
    first = visible.compute_losses(*args)["loss_keypoint"]
    fixed(pyramid, rois)
    fixed.set_weights(visible.get_weights())
    second = fixed.compute_losses(*args)["loss_keypoint"]
    # Two labelled keypoints inside the first RoI only; 2 slots x 3 keypoints in all.
    np.testing.assert_allclose(second.numpy() * 6, first.numpy() * 2, rtol=1e-5)


def test_pixel_index_coordinates_are_torchvisions_convention():
    """``heatmap_coordinates="pixel_index"`` (torchvision): trained on keypoints 0.5 px
    lower, and decoded keypoints 0.5 px higher, than the same head in continuous
    coordinates (kmask, detectron2); the argument survives get_config."""
    keras.utils.set_random_seed(3)
    pyramid = _pyramid(1)
    rois = tf.constant([[[20, 20, 60, 60], [10, 5, 70, 40]]], tf.float32)
    # Keypoints 0.2 px right of a cell edge (cell 0.71 px): the 0.5 px shift moves them
    # to the previous cell, so the two conventions' targets differ.
    points = [[[30.2, 30.2, 2], [50.0, 40.0, 1], [0, 0, 0]]]
    targets = {"gt_keypoints": tf.constant([points])}
    shifted = {"gt_keypoints": targets["gt_keypoints"] - [0.5, 0.5, 0.0]}
    args = (pyramid, rois, tf.constant([[0, 0]]), tf.constant([[0, 0]]))
    continuous = KeypointHead(NUM_KEYPOINTS, num_conv=1, conv_dim=8, **POOLING)
    pixel_index = KeypointHead(
        NUM_KEYPOINTS, num_conv=1, conv_dim=8, heatmap_coordinates="pixel_index", **POOLING
    )
    continuous(pyramid, rois)
    pixel_index(pyramid, rois)
    pixel_index.set_weights(continuous.get_weights())
    loss = pixel_index.compute_losses(*args, targets)["loss_keypoint"]
    np.testing.assert_allclose(
        loss.numpy(), continuous.compute_losses(*args, shifted)["loss_keypoint"].numpy()
    )
    assert abs(loss.numpy() - continuous.compute_losses(*args, targets)["loss_keypoint"]) > 1e-4
    detections = {"detection_boxes": rois, "num_detections": tf.constant([2])}
    got = pixel_index.inference(pyramid, detections)["detection_keypoints"].numpy()
    base = continuous.inference(pyramid, detections)["detection_keypoints"].numpy()
    np.testing.assert_allclose(got, base + [0.5, 0.5, 0.0], atol=1e-5)
    config = pixel_index.get_config()
    assert config["heatmap_coordinates"] == "pixel_index"
    assert KeypointHead.from_config(config).heatmap_coordinates == "pixel_index"


def test_inference_outputs_and_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    model = tiny_keypoint_model(mask_head=False)
    features, _ = next(iter(pipeline_batches([_example(2)])))
    outputs = model(features)
    keypoints = outputs["detection_keypoints"].numpy()
    count = int(outputs["num_detections"][0])
    assert keypoints.shape == (1, 100, NUM_KEYPOINTS, 3)
    assert count > 0 and (keypoints[0, count:] == 0).all()
    boxes = outputs["detection_boxes"].numpy()[0, :count]
    x, y, score = np.moveaxis(keypoints[0, :count], -1, 0)
    assert ((x >= boxes[:, 1:2]) & (x <= boxes[:, 3:4])).all()
    assert ((y >= boxes[:, 0:1]) & (y <= boxes[:, 2:3])).all()
    assert ((score > 0) & (score <= 1.5)).all()
    path = tmp_path / "keypoints.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.roi_heads.instance_heads[0], KeypointHead)
    np.testing.assert_array_equal(loaded(features)["detection_keypoints"].numpy(), keypoints)
    assert json.dumps(loaded.get_config()) == json.dumps(model.get_config())
