"""torchvision detectors with random weights, converted, compared stage by stage.

The reference is torchvision itself, run on the same input in the same process. Every
model gets random frozen-BN statistics so that they matter; the v1 models run their
backbone BN with eps 0 as torchvision does for the COCO_V1 weights. Every one of the 91
class slots, the 10 unused COCO slots included, has ordinary random weights: the converted
model keeps all of them as classes, so its softmax, boxes and NMS are torchvision's.

Tolerances: features and head outputs within 1e-4 of the feature scale (float32 through
50 layers); proposals within 0.05 px (random RPN deltas reach the exp clamp, which amplifies
float32 rounding); final detections (from the original image, through
each library's own resizing and kmask's ``Predictor``, on images of two sizes) within 0.5 px
and 1e-3 in score, of the same class, each torchvision detection paired with one of
kmask's and the other way round; pasted masks IoU >= 0.99.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kmask.convert.checkpoint_reader import read_torch_state_dict
from kmask.convert.coco_categories import TORCHVISION_COCO_CATEGORIES
from kmask.convert.torchvision_converter import TorchvisionConverter
from kmask.evaluation import Predictor

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from tests.convert.torch_models import random_torchvision_model  # noqa: E402

LEVELS = ("P2", "P3", "P4", "P5", "P6")
TORCH_LEVELS = ("0", "1", "2", "3", "pool")
XYXY_TO_YXYX = [1, 0, 3, 2]


def _relative_error(kmask_nhwc: np.ndarray, torch_nchw: np.ndarray) -> float:
    reference = torch_nchw.transpose(0, 2, 3, 1)
    return float(np.abs(kmask_nhwc - reference).max() / np.abs(reference).max())


@pytest.fixture(
    scope="module",
    params=["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn"],
)
def converted(request, tmp_path_factory):
    """(arch, torchvision model, kmask config, kmask model), converted from a saved .pth."""
    arch = request.param
    reference = random_torchvision_model(arch)
    path = tmp_path_factory.mktemp(arch) / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    config, model = TorchvisionConverter(arch).convert(read_torch_state_dict(path), str(path))
    return arch, reference, config, model


def _torch_inputs(reference, image: np.ndarray):
    """torchvision's transform at scale 1 (an image already at its test size)."""
    reference.transform.min_size = (image.shape[0],)
    reference.transform.max_size = 10_000
    with torch.no_grad():
        images, _ = reference.transform([torch.from_numpy(image.transpose(2, 0, 1) / 255.0)])
    return images


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_stage_by_stage(converted):
    """Each stage on the same input; errors relative to the stage's largest magnitude
    (printed: ``pytest tests/convert -s -k stage``)."""
    arch, reference, config, model = converted
    height, width = 192, 256
    image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
    images = _torch_inputs(reference, image)
    with torch.no_grad():
        body = reference.backbone.body(images.tensors)
        pyramid = reference.backbone(images.tensors)
        objectness, deltas = reference.rpn.head([pyramid[k] for k in TORCH_LEVELS])
        proposals, _ = reference.rpn(images, pyramid)
    size = tf.constant([[height, width]])
    normalized = model.normalizer(tf.constant(image[None]), size)
    features = model.backbone(normalized)
    pyramid_k = model.fpn(features)
    objectness_k, deltas_k = model.rpn.head(pyramid_k)
    errors = {
        "input": _relative(normalized.numpy()[0], images.tensors[0].numpy().transpose(1, 2, 0)),
        "C2..C5": max(
            _relative_error(features[f"C{i + 2}"].numpy(), body[str(i)].numpy()) for i in range(4)
        ),
        "P2..P6": max(
            _relative_error(pyramid_k[key].numpy(), pyramid[torch_key].numpy())
            for key, torch_key in zip(LEVELS, TORCH_LEVELS)
        ),
    }
    rpn_logits, rpn_deltas = [], []
    for i, key in enumerate(LEVELS):
        expected = objectness[i].numpy()[0].transpose(1, 2, 0).reshape(-1)
        rpn_logits.append(_relative(objectness_k[key].numpy()[0], expected))
        raw = deltas[i].numpy()[0]
        anchors = raw.shape[0] // 4
        raw = raw.reshape(anchors, 4, *raw.shape[1:]).transpose(2, 3, 0, 1).reshape(-1, 4)
        rpn_deltas.append(_relative(deltas_k[key].numpy()[0], raw[:, XYXY_TO_YXYX]))
    errors["RPN logits"], errors["RPN deltas"] = max(rpn_logits), max(rpn_deltas)

    outputs = model({"images": tf.constant(image[None]), "image_size": size}, training=False)
    expected_proposals = proposals[0].numpy()[:, XYXY_TO_YXYX]
    count = int(outputs["num_proposals"][0])
    assert count == len(expected_proposals)
    got = outputs["proposals"].numpy()[0, :count]
    # Proposals in pixels: each torchvision proposal's nearest kmask one (order can swap
    # between near-equal scores).
    proposal_px = float(np.abs(expected_proposals[:, None] - got[None]).max(-1).min(1).max())

    # Heads on the same (torchvision's) proposals.
    rois = tf.constant(expected_proposals[None])
    with torch.no_grad():
        pooled = reference.roi_heads.box_roi_pool(pyramid, proposals, images.image_sizes)
        logits, regression = reference.roi_heads.box_predictor(reference.roi_heads.box_head(pooled))
    logits_k, box_deltas_k = model.roi_heads.box_head(pyramid_k, rois)
    assert config.model.num_classes == 90
    errors["box logits"] = _relative(logits_k.numpy()[0], logits.numpy())
    regression = regression.numpy().reshape(-1, 91, 4)[:, 1:][..., XYXY_TO_YXYX]
    errors["box deltas"] = _relative(box_deltas_k.numpy()[0], regression)
    if config.model.mask_head is not None:
        with torch.no_grad():
            pooled = reference.roi_heads.mask_roi_pool(pyramid, proposals, images.image_sizes)
            masks = reference.roi_heads.mask_predictor(reference.roi_heads.mask_head(pooled))
        masks = masks.numpy()[:, 1:].transpose(0, 2, 3, 1)
        errors["mask logits"] = _relative(
            model.roi_heads.instance_heads[0](pyramid_k, rois).numpy()[0], masks
        )
    print(f"\n{arch}: proposals within {proposal_px:.1e} px; relative errors", end=" ")
    print(", ".join(f"{name} {value:.1e}" for name, value in errors.items()))
    assert proposal_px < 0.05
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.parametrize(
    "shape, min_size, resized, with_unused",
    [
        # 160x243 resized by 1.2 to 192x291.6: torchvision floors to 291 (rounding gives
        # 292); the converted config's data.resize_rounding=floor does the same. Among
        # torchvision's detections of this image by maskrcnn_resnet50_fpn include unused
        # slots (the other models detect none here: not asserted).
        ((160, 243), 192, (192, 291), True),
        ((250, 180), 224, (311, 224), False),
    ],
)
def test_final_detections_from_the_original_image(converted, shape, min_size, resized, with_unused):
    """torchvision's detections, every one, through kmask's Predictor: the same class (the
    unused slots' too, reported under their ids with the name "N/A"), box within 0.5 px,
    score within 1e-3; and no kmask detection without a torchvision partner."""
    arch, reference, config, model = converted
    with_unused &= arch == "maskrcnn_resnet50_fpn"
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    reference.transform.min_size = (min_size,)
    reference.transform.max_size = 1333
    with torch.no_grad():
        expected = reference([torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float()])[0]
    predictor = Predictor(
        model, dataclasses.replace(config.data, min_size=(min_size,)), mask_paste="torchvision"
    )
    features = predictor.features_for_image(image)
    assert features["image_size"].numpy().tolist() == [list(resized)]
    got = predictor.image_detections(predictor.predict_batch(features), 0)

    boxes = expected["boxes"].numpy()[:, XYXY_TO_YXYX]
    labels = expected["labels"].numpy()
    categories = {c["id"]: c["name"] for c in TorchvisionConverter(arch).categories(90)}
    assert len(boxes) > 10, "the random model should detect something"
    # Class k is COCO id (slot) k + 1.
    cost = np.maximum(
        np.abs(boxes[:, None] - got["boxes"][None]).max(-1) / 0.5,
        np.abs(expected["scores"].numpy()[:, None] - got["scores"][None]) / 1e-3,
    )
    cost[labels[:, None] - 1 != got["classes"][None]] = np.inf
    assert len(got["boxes"]) == len(boxes)
    paired = cost.min(1) < 1.0
    assert paired.all(), f"{(~paired).sum()} of {len(boxes)} torchvision detections unpaired"
    assert (cost.min(0) < 1.0).all(), "a kmask detection without a torchvision partner"
    unused = [label for label in labels if categories[int(label)] == "N/A"]
    assert unused or not with_unused, "random weights should detect unused slots"
    if config.model.mask_head is not None:
        _check_masks(image, expected, paired)


def test_categories_are_torchvisions_slots():
    """The 90 classes are torchvision's slots 1..90 with its names ("N/A" for the 10 ids
    without a COCO category), the unused ones marked for evaluation."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    categories = TorchvisionConverter("maskrcnn_resnet50_fpn").categories(90)
    assert [c["id"] for c in categories] == list(range(1, 91))
    assert [c["name"] for c in categories] == names[1:]
    assert [c["id"] for c in categories if c.get("unused")] == [
        c["id"] for c in categories if c["name"] == "N/A"
    ]
    assert categories == [dict(c) for c in TORCHVISION_COCO_CATEGORIES]


def _check_masks(image, expected, paired) -> None:
    """Pasted masks of paired detections, IoU >= 0.99.

    Random weights give speckled box-frame masks (logits of +-300) on which a sub-pixel
    difference in the box flips whole speckles; the released models predict smooth masks.
    So the pasting is compared on smooth masks (an elliptic blob filling each box frame),
    pasted by torchvision's ``paste_masks_in_image`` and by kmask's ``paste_masks`` with
    the converted config's method (``eval.mask_paste: torchvision``), at the paired
    detections' boxes (torchvision's: the libraries' boxes differ by up to 0.5 px, checked
    above, which can move a truncated box edge by a pixel), in original-image pixels. The box-frame
    masks themselves are compared in ``test_stage_by_stage``.
    """
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from kmask.ops.masks import paste_masks

    # A smooth elliptic blob: no interpolated value sits exactly on the 0.5 threshold
    # (a 0/1 mask would put whole edges there, where float rounding decides).
    grid = (np.arange(28) + 0.5) / 28 - 0.5
    radius = np.sqrt((grid[:, None] / 0.45) ** 2 + (grid[None, :] / 0.4) ** 2)
    ellipse = (1.0 / (1.0 + np.exp(8.0 * (radius - 1.0)))).astype(np.float32)
    boxes = expected["boxes"].numpy()[paired]
    probabilities = np.broadcast_to(ellipse, (len(boxes), 1, 28, 28)).copy()
    theirs = (
        paste_masks_in_image(
            torch.from_numpy(probabilities), torch.from_numpy(boxes), image.shape[:2]
        ).numpy()[:, 0]
        >= 0.5
    )
    mine = paste_masks(
        probabilities[None, :, 0],
        boxes[None, :, [1, 0, 3, 2]],
        image.shape[:2],
        method="torchvision",
    ).numpy()[0]
    union = np.logical_or(mine, theirs).sum((1, 2))
    iou = np.logical_and(mine, theirs).sum((1, 2)) / np.maximum(union, 1)
    assert (iou[union > 0] >= 0.99).all(), np.sort(iou)[:5]
