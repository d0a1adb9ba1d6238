"""detectron2's R-50-FPN Mask R-CNN and Keypoint R-CNN, converted, against an independent
PyTorch reference stage by stage.

The reference (``tests/convert/detectron2_reference.py``) is built from torchvision parts
with detectron2's conventions written out; its random weights are written under
detectron2's model-zoo keys (a pickled ``{"model": {key: ndarray}}``, as
``model_final_*.pkl``), converted with ``Detectron2Converter`` and every stage of the kmask
model is compared with the reference's, on images of two sizes that are not multiples of 32
(so that the padding to 32 and the clipping to the valid area matter):

- the normalized input (BGR, MSRA means, std 1, zero padding), res2..res5 (stride on the
  1x1 conv), P2..P6, the anchors (offset 0, not rounded), the RPN logits and deltas;
- the proposals (detectron2's selection: per-level top 1000, clip, empty dropped, NMS per
  level, top 1000), as sets: near-equal objectness can swap two proposals' order, so each
  proposal is paired with the nearest one of the other side;
- on the reference's proposals (and on boxes at the FPN level boundaries, where the
  ``1e-8`` of detectron2's level assignment would act): the box head's class logits and
  deltas, then the detections of detectron2's inference (softmax, score > 0.05, clip, NMS
  0.5 per class, top k);
- the mask logits (ROIAlignV2 14x14, 4 convs, deconv, predictor) and masks, the keypoint
  heatmap logits (8 convs, deconv, 2x bilinear) and keypoints (bicubic resize to the box,
  ``x1 + (d + 0.5) w / ceil(w)``) on the reference's detections;
- the whole converted model end to end against the reference end to end.

Tolerances: maps and head outputs within 1e-4 of the stage's largest magnitude (float32
through 50 layers); anchors within 1e-3 px (an anchor rounded to whole pixels, as
torchvision does, is up to 0.5 px off); proposals and detections within 0.01 px and
1e-4 in score (measured: about 1e-4 px, 1e-5); keypoints as ``_check_keypoints`` says.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tensorflow as tf

from kmask.convert import Detectron2Converter
from kmask.convert.checkpoint_reader import read_detectron2_pickle
from kmask.ops.roi_align import assign_levels

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from tests.convert.detectron2_reference import (  # noqa: E402
    MEAN_BGR,
    Detectron2Reference,
    heatmaps_to_keypoints,
    level_of_boxes,
)

SIZES = ((100, 124), (135, 90))  # (h, w), padded to 128x128 and 160x96
XYXY_TO_YXYX = [1, 0, 3, 2]
# Keypoint R-CNN runs 8 convs of 512 per detection: 10 detections per image on both sides
# (detectron2's TEST.DETECTIONS_PER_IMAGE) keep the test fast.
MODELS = {
    "mask": ("mask_rcnn_R_50_FPN_3x", 80, 100),
    "keypoint": ("keypoint_rcnn_R_50_FPN_3x", 1, 10),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def converted(request, tmp_path_factory):
    """(reference, config, kmask model) of a model-zoo style .pkl of the reference."""
    head = request.param
    arch, num_classes, detections = MODELS[head]
    reference = Detectron2Reference(num_classes, head, detections_per_image=detections)
    path = tmp_path_factory.mktemp(head) / "model_final.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": reference.detectron2_state(), "__author__": "test"}, handle)
    config, model = Detectron2Converter(arch).convert(read_detectron2_pickle(path), str(path))
    model.roi_heads.box_head.postprocess.detections_per_image = detections
    return reference, config, model


def _relative(mine: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(mine - theirs).max() / np.abs(theirs).max())


def _nhwc(nchw: torch.Tensor) -> np.ndarray:
    return nchw.numpy().transpose(0, 2, 3, 1)


def _yxyx(xyxy: torch.Tensor) -> np.ndarray:
    return xyxy.numpy()[..., XYXY_TO_YXYX]


def _pairs(theirs, mine, px: float, score: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs each reference detection ``(boxes yxyx, scores, classes)`` with the kmask one
    of the same class within ``px`` (every coordinate) and ``score``: (partner, paired)."""
    cost = np.maximum(
        np.abs(theirs[0][:, None] - mine[0][None]).max(-1) / px,
        np.abs(theirs[1][:, None] - mine[1][None]) / score,
    )
    cost[theirs[2][:, None] != mine[2][None]] = np.inf
    partner = cost.argmin(1) if cost.size else np.zeros(0, int)
    return partner, cost[np.arange(len(partner)), partner] < 1.0


def _detections(outputs: dict[str, tf.Tensor]) -> tuple[np.ndarray, ...]:
    count = int(outputs["num_detections"][0])
    return tuple(
        outputs[key][0, :count].numpy()
        for key in ("detection_boxes", "detection_scores", "detection_classes")
    )


def test_config_carries_detectron2_conventions(converted):
    _, config, model = converted
    model_config = config.model
    assert model_config.input.channel_order == "BGR" and model_config.input.pixel_scale == 1.0
    assert tuple(model_config.input.pixel_std) == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(model_config.input.pixel_mean, MEAN_BGR, rtol=1e-6)
    assert model_config.backbone.resnet.stride_in_1x1 and model.rpn.head.num_anchors == 3
    assert model_config.rpn.anchor_offset == 0.0 and not model_config.rpn.anchor_rounding
    pooler = model_config.box_head.pooler
    assert pooler.aligned and pooler.sampling_ratio == 0 and pooler.resolution == 7


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_stage_by_stage(converted, size):
    reference, _, model = converted
    height, width = size
    rgb = np.random.default_rng(height).uniform(0, 255, (height, width, 3)).astype(np.float32)
    with torch.no_grad():
        torch_input = reference.preprocess(rgb)
        res = reference.bottom_up(torch_input)
        pyramid = reference.fpn(res)
        rpn_logits, rpn_deltas = reference.rpn_head(pyramid)
        anchors = reference.anchors(pyramid)
        proposals, proposal_logits = reference.proposals(pyramid, height, width)
        boxes, scores, classes = reference.detect(pyramid, proposals, height, width)
    padded = np.zeros((1, *torch_input.shape[2:], 3), np.float32)
    padded[0, :height, :width] = rgb
    image_size = tf.constant([[height, width]])
    normalized = model.normalizer(tf.constant(padded), image_size).numpy()
    assert np.abs(normalized - _nhwc(torch_input)).max() < 1e-4, "input (BGR - mean, padding)"
    features = model.backbone(tf.constant(normalized))
    for level in range(2, 6):
        error = _relative(features[f"C{level}"].numpy(), _nhwc(res[level - 2]))
        assert error < 1e-4, f"res{level} (C{level}): relative error {error:.1e}"
    pyramid_k = model.fpn(features)
    for level in range(2, 7):
        error = _relative(pyramid_k[f"P{level}"].numpy(), _nhwc(pyramid[level - 2]))
        assert error < 1e-4, f"P{level}: relative error {error:.1e}"

    anchors_k = model.rpn.anchor_generator(pyramid_k)
    logits_k, deltas_k = model.rpn.head(pyramid_k)
    for level in range(2, 7):
        key, i = f"P{level}", level - 2
        error = np.abs(anchors_k[key].numpy() - _yxyx(anchors[i])).max()
        assert error < 1e-3, f"anchors on {key}: {error:.2e} px"
        error = _relative(logits_k[key].numpy()[0], rpn_logits[i].numpy())
        assert error < 1e-4, f"RPN objectness on {key}: relative error {error:.1e}"
        error = _relative(deltas_k[key].numpy()[0], _yxyx(rpn_deltas[i]))
        assert error < 1e-4, f"RPN deltas on {key}: relative error {error:.1e}"

    outputs = model({"images": tf.constant(padded), "image_size": image_size})
    count = int(outputs["num_proposals"][0])
    assert count == len(proposals), f"proposals: {count} kmask, {len(proposals)} reference"
    expected = _yxyx(proposals)
    got = outputs["proposals"][0, :count].numpy()
    # Pairs by box and score: a box clipped to the image can be a proposal of two levels.
    cost = np.maximum(
        np.abs(expected[:, None] - got[None]).max(-1) / 0.01,
        np.abs(
            torch.sigmoid(proposal_logits).numpy()[:, None]
            - outputs["proposal_scores"][0, :count].numpy()[None]
        )
        / 1e-5,
    )
    nearest = cost.argmin(1)
    worst = cost[np.arange(count), nearest].max()
    assert worst < 1.0, f"proposals: {worst:.2f} x (0.01 px, 1e-5 in score)"
    assert len(set(nearest.tolist())) == count, "proposals: not one-to-one"

    # The box head on the reference's proposals and on boxes at the level boundaries.
    sides = [np.float32(s) for s in (112.0, 224.0, 448.0)]
    for _ in range(3):
        sides += [np.nextafter(s, np.float32(0)) for s in sides[-3:]]
    square = torch.tensor([[4.0, 2.0, 4.0 + s, 2.0 + s] for s in sides])
    levels = level_of_boxes(square).numpy()
    assert {2, 3, 4, 5} <= set(levels.tolist())  # the boxes straddle each boundary
    assert assign_levels(tf.constant(_yxyx(square)), 2, 5).numpy().tolist() == levels.tolist()
    rois = torch.cat([proposals, square])
    with torch.no_grad():
        class_logits, class_deltas = reference.box_head(pyramid, rois)
    logits_k, deltas_k = model.roi_heads.box_head(pyramid_k, tf.constant(_yxyx(rois)[None]))
    num_classes = class_logits.shape[1] - 1
    expected = class_logits.numpy()[:, [num_classes, *range(num_classes)]]  # background first
    error = _relative(logits_k.numpy()[0], expected)
    assert error < 1e-4, f"box head class logits: relative error {error:.1e}"
    expected = class_deltas.numpy().reshape(len(rois), num_classes, 4)[..., XYXY_TO_YXYX]
    error = _relative(deltas_k.numpy()[0], expected)
    assert error < 1e-4, f"box head deltas: relative error {error:.1e}"

    count = len(proposals)
    valid = tf.ones([1, count], tf.bool)
    detections = model.roi_heads.box_head.postprocess(
        logits_k[:, :count], deltas_k[:, :count], _yxyx(proposals)[None], valid, image_size
    )
    theirs = (_yxyx(boxes), scores.numpy(), classes.numpy())
    assert len(theirs[0]) > 5, "the random model should detect something"
    mine = _detections(detections)
    assert len(mine[0]) == len(theirs[0]), f"detections: {len(mine[0])} vs {len(theirs[0])}"
    partner, paired = _pairs(theirs, mine, 0.01, 1e-4)
    assert paired.all(), f"detections on the same proposals: {(~paired).sum()} differ"

    end_to_end = _detections(outputs)
    assert len(end_to_end[0]) == len(theirs[0]), "detections end to end: count"
    end_partner, paired = _pairs(theirs, end_to_end, 0.01, 1e-4)
    assert paired.all(), f"detections end to end: {(~paired).sum()} differ"

    head = model.roi_heads.instance_heads[0]
    with torch.no_grad():
        if reference.head == "mask":
            maps = reference.mask_logits(pyramid, boxes)
        else:
            maps = reference.keypoint_logits(pyramid, boxes)
    maps_k = head(pyramid_k, tf.constant(theirs[0][None])).numpy()[0]
    error = _relative(maps_k, _nhwc(maps))
    assert error < 1e-4, f"{reference.head} head logits: relative error {error:.1e}"
    rows = np.arange(len(boxes))
    if reference.head == "mask":
        expected = torch.sigmoid(maps).numpy()[rows, theirs[2]]
        got = outputs["detection_masks"][0].numpy()[end_partner]
        assert np.abs(got - expected).max() < 1e-3, "masks end to end"
    else:
        _check_keypoints(reference, head, pyramid_k, maps, boxes, theirs, outputs, end_partner)


def _check_keypoints(reference, head, pyramid_k, maps, boxes, theirs, outputs, partner):
    """Keypoints decoded from the same heatmap logits, then end to end.

    detectron2 resizes each heatmap bicubically to ``ceil(h) x ceil(w)`` and takes the
    maximum, at ``x1 + (d + 0.5) w / ceil(w)``; kmask evaluates the same interpolant
    (``kmask.ops.keypoints``). On the same boxes, 95% of the keypoints must agree to 1e-3 px
    (two resized pixels within float32 rounding of each other may swap; a missing 0.5 px
    offset moves every keypoint by 0.5 w / ceil(w)); end to end (boxes ~1e-4 px apart),
    95% to 1e-2 px."""
    expected = heatmaps_to_keypoints(maps, boxes).numpy()
    detections = {
        "detection_boxes": tf.constant(theirs[0][None]),
        "detection_classes": tf.constant(theirs[2][None]),
        "num_detections": tf.constant([len(boxes)]),
    }
    got = head.inference(pyramid_k, detections)["detection_keypoints"].numpy()[0]
    distance = np.abs(got[..., :2] - expected[..., :2]).max(-1)
    assert (distance < 1e-3).mean() >= 0.95, f"keypoints on the same boxes: {distance.max()}"
    agree = distance < 1e-3
    np.testing.assert_allclose(got[..., 2][agree], expected[..., 2][agree], rtol=1e-3)
    end_to_end = outputs["detection_keypoints"][0].numpy()[partner]
    distance = np.abs(end_to_end[..., :2] - expected[..., :2]).max(-1)
    assert (distance < 1e-2).mean() >= 0.95, f"keypoints end to end: {distance.max()}"
