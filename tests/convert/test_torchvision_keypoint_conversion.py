"""torchvision ``keypointrcnn_resnet50_fpn`` with random weights, converted, compared stage by
stage: the pyramid, the box head, the keypoint heatmaps (RoIAlign 14x14, 8 convs, the 4x4
stride-2 transposed conv with ``padding=1``, 2x bilinear upsampling), the decoding of
torchvision's own heatmaps into keypoints, and the final keypoints from the original image.

Tolerances as in ``test_torchvision_conversion.py``: features and heatmaps within 1e-4 of
their scale. Decoding: torchvision's keypoints on its own heatmaps and boxes, every one to
1e-3 px (kmask finds the maximum of the whole resized heatmap, ``tests/ops/test_keypoints.py``),
on speckled random-weight heatmaps with many near-equal peaks. torchvision trains and
reports keypoints in COCO's pixel indices (``heatmap_coordinates: pixel_index``): kmask's
continuous keypoints are 0.5 px higher, and its COCO results (minus 0.5) are torchvision's.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kmask.convert.checkpoint_reader import read_torch_state_dict
from kmask.convert.torchvision_converter import TorchvisionConverter
from kmask.evaluation import Predictor
from kmask.ops.keypoints import heatmaps_to_keypoints

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from tests.convert.torch_models import random_torchvision_model  # noqa: E402

ARCH = "keypointrcnn_resnet50_fpn"
XYXY_TO_YXYX = [1, 0, 3, 2]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    reference = random_torchvision_model(ARCH)
    path = tmp_path_factory.mktemp(ARCH) / f"{ARCH}.pth"
    torch.save(reference.state_dict(), path)
    converter = TorchvisionConverter(ARCH)
    config, model = converter.convert(read_torch_state_dict(path), str(path))
    return reference, config, model, converter


def _relative_error(kmask_nhwc: np.ndarray, torch_nchw: np.ndarray) -> float:
    reference = torch_nchw.transpose(0, 2, 3, 1)
    return float(np.abs(kmask_nhwc - reference).max() / np.abs(reference).max())


def test_config_and_categories(converted):
    _, config, model, converter = converted
    assert config.model.num_classes == 1 and config.model.mask_head is None
    head = model.roi_heads.instance_heads[0]
    assert head.num_keypoints == 17 and head.pooler.sampling_ratio == 2
    assert not head.pooler.aligned and head.convs.num_conv == 8
    assert config.model.keypoint_head.heatmap_coordinates == "pixel_index"
    assert head.heatmap_coordinates == "pixel_index"
    (person,) = converter.categories(1)
    assert person["name"] == "person" and len(person["keypoints"]) == 17


def test_stage_by_stage(converted):
    reference, _, model, _ = converted
    height, width = 160, 224
    image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
    reference.transform.min_size = (height,)
    reference.transform.max_size = 10_000
    with torch.no_grad():
        images, _ = reference.transform([torch.from_numpy(image.transpose(2, 0, 1) / 255.0)])
        pyramid = reference.backbone(images.tensors)
        proposals, _ = reference.rpn(images, pyramid)
    size = tf.constant([[height, width]])
    pyramid_k = model.fpn(model.backbone(model.normalizer(tf.constant(image[None]), size)))
    for key, torch_key in zip(("P2", "P3", "P4", "P5", "P6"), ("0", "1", "2", "3", "pool")):
        assert _relative_error(pyramid_k[key].numpy(), pyramid[torch_key].numpy()) < 1e-4, key

    boxes = proposals[0][:60]
    rois = tf.constant(boxes.numpy()[None][..., XYXY_TO_YXYX])
    with torch.no_grad():
        pooled = reference.roi_heads.box_roi_pool(pyramid, [boxes], images.image_sizes)
        logits, _ = reference.roi_heads.box_predictor(reference.roi_heads.box_head(pooled))
        pooled = reference.roi_heads.keypoint_roi_pool(pyramid, [boxes], images.image_sizes)
        heatmaps = reference.roi_heads.keypoint_predictor(
            reference.roi_heads.keypoint_head(pooled)
        ).numpy()  # [R, 17, 56, 56], after the 2x bilinear upsampling
    logits_k, _ = model.roi_heads.box_head(pyramid_k, rois)
    scale = np.abs(logits.numpy()).max()
    assert np.abs(logits_k.numpy()[0] - logits.numpy()).max() < 1e-4 * scale
    heatmaps_k = model.roi_heads.instance_heads[0](pyramid_k, rois).numpy()[0]
    expected = heatmaps.transpose(0, 2, 3, 1)
    assert np.abs(heatmaps_k - expected).max() < 1e-4 * np.abs(expected).max()

    # Decoding torchvision's heatmaps at torchvision's boxes, against its own decoding.
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_decode

    expected_points, expected_logits = tv_decode(torch.from_numpy(heatmaps), boxes)
    got = heatmaps_to_keypoints(expected[None], rois).numpy()[0]
    distance = np.abs(got[..., :2] - expected_points.numpy()[..., :2]).max(-1)
    assert (distance < 1e-3).all(), f"{(distance >= 1e-3).sum()} of {distance.size} differ"
    # Scores: detectron2's probability of torchvision's logit at the maximum.
    flat = heatmaps.reshape(*heatmaps.shape[:2], -1).astype(np.float64)
    peak = flat.max(-1)
    probability = np.exp(expected_logits.numpy() - peak) / np.exp(flat - peak[..., None]).sum(-1)
    agree = distance < 1e-3
    np.testing.assert_allclose(got[..., 2][agree], probability[agree], rtol=1e-3, atol=1e-7)


@pytest.mark.slow
def test_final_keypoints_from_the_original_image(converted):
    from kmask.data.category_map import CategoryMap
    from kmask.evaluation.coco_results import to_coco_results

    reference, config, model, converter = converted
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (160, 240, 3), dtype=np.uint8)  # resized by 1.2
    reference.transform.min_size = (192,)
    reference.transform.max_size = 1333
    with torch.no_grad():
        expected = reference([torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float()])[0]
    predictor = Predictor(model, type(config.data)(min_size=(192,), max_size=1333))
    got = predictor.image_detections(
        predictor.predict_batch(predictor.features_for_image(image)), 0
    )
    boxes = expected["boxes"].numpy()[:, XYXY_TO_YXYX]
    scores = expected["scores"].numpy()
    assert len(boxes) > 10, "the random model should detect something"
    cost = np.maximum(
        np.abs(boxes[:, None] - got["boxes"][None]).max(-1) / 0.5,
        np.abs(scores[:, None] - got["scores"][None]) / 1e-3,
    )
    partner = cost.argmin(1)
    paired = cost[np.arange(len(boxes)), partner] < 1.0
    assert paired.mean() >= 0.95, f"only {paired.mean():.2%} of detections agree"
    theirs = expected["keypoints"].numpy()[paired][..., :2]
    # kmask's keypoints are continuous; its COCO results, like torchvision's, pixel indices.
    results = to_coco_results(
        {
            "image_id": 0,
            **{k: got[k][partner[paired]] for k in ("boxes", "scores", "classes", "keypoints")},
        },
        CategoryMap(converter.categories(1)),
    )
    mine = np.array([r["keypoints"] for r in results]).reshape(-1, 17, 3)[..., :2]
    # Boxes agree to float32 rounding; a box side at an integer can change ceil(w) and move
    # a keypoint by up to one resized pixel (1.2 source pixels here).
    distance = np.abs(mine - theirs).max(-1)
    assert (distance < 0.05).mean() >= 0.9 and (distance < 1.3).mean() >= 0.98, distance
