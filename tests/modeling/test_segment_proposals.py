"""FPN segment proposals (FPN section 6, appendix A): target assignment against a NumPy
reference of the appendix's rules, the losses, inference, and the whole model in this mode.
"""

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kmask.config import ConfigError, ModelConfig, SegmentProposalsConfig, load_config
from kmask.layers.image_normalization import ImageNormalization
from kmask.modeling import FPN, MaskRCNN, build_mask_rcnn
from kmask.modeling.proposals.segment_proposals import SegmentProposals
from kmask.ops.masks import mask_targets
from kmask.ops.segment_windows import assign_heads, head_scales, mask_boxes, segment_targets
from tests.keras_harness import assert_round_trip
from tests.modeling.test_mask_rcnn import TinyBackbone
from tests.toy_data import decoded_example, pipeline_batches, three_shapes

PAPER_SCALES = (32.0, 64.0, 128.0, 256.0, 512.0)
SQRT2 = math.sqrt(2.0)


def pyramid(size: tuple[int, int], channels: int = 4, batch: int = 1, seed: int = 0) -> dict:
    """Random P2..P6 maps of an image of ``size`` (padded to a multiple of 64)."""
    rng = np.random.default_rng(seed)
    return {
        f"P{k}": tf.constant(
            rng.normal(size=(batch, -(-size[0] // 2**k), -(-size[1] // 2**k), channels)),
            tf.float32,
        )
        for k in range(2, 7)
    }


# ----------------------------------------------------------------- NumPy reference (appendix)


def reference_windows(features, canonical_scales, num_mlps, padding=0.25):
    """Every window as (cy, cx, stride, head, side), level by level, MLP by MLP, row-major."""
    windows = []
    for i, key in enumerate(sorted(features, key=lambda k: int(k[1:]))):
        stride = 2 ** int(key[1:])
        _, height, width, _ = features[key].shape
        for j in range(num_mlps):
            scale = canonical_scales[i] * 2.0 ** (j / num_mlps)
            for r in range(height):
                for c in range(width):
                    cy, cx = (r + 0.5) * stride, (c + 0.5) * stride
                    windows.append((cy, cx, stride, i * num_mlps + j, (1 + padding) * scale))
    return windows


def reference_head(box, canonical_scales, num_mlps):
    """The head of an object: the canonical scale nearest to max(w, h) in log space."""
    scale = max(box[2] - box[0], box[3] - box[1])
    scales = [s * 2.0 ** (j / num_mlps) for s in canonical_scales for j in range(num_mlps)]
    distances = [abs(math.log(scale) - math.log(s)) for s in scales]
    return distances.index(min(distances))


def reference_labels(windows, boxes, classes, image_size, canonical_scales, num_mlps, radius=1):
    """Labels (1 / 0 / -1) and matched objects of all windows, one window at a time."""
    labels, matched = [], []
    for cy, cx, stride, head, _ in windows:
        best = None
        for g, (box, cls) in enumerate(zip(boxes, classes)):
            if cls < 0 or reference_head(box, canonical_scales, num_mlps) != head:
                continue
            oy, ox = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            if abs(oy - cy) <= radius * stride and abs(ox - cx) <= radius * stride:
                distance = (oy - cy) ** 2 + (ox - cx) ** 2
                if best is None or distance < best[0]:
                    best = (distance, g)
        inside = cy < image_size[0] + radius * stride and cx < image_size[1] + radius * stride
        labels.append(1 if best is not None else (0 if inside else -1))
        matched.append(best[1] if best is not None else 0)
    return np.array(labels), np.array(matched)


# ------------------------------------------------------------------------------- assignment


def test_scale_mapping_nearest_in_log_space_with_half_octaves():
    scales = head_scales(PAPER_SCALES, 2)
    np.testing.assert_allclose(
        scales, [32, 32 * SQRT2, 64, 64 * SQRT2, 128, 128 * SQRT2, 256, 256 * SQRT2, 512,
                 512 * SQRT2], rtol=1e-6)  # fmt: skip
    # (larger side, expected head): head 2i is the 5x5 MLP on P(i+2), 2i+1 the 7x7 one.
    cases = [
        (32, 0),
        (45.25, 1),  # 32 sqrt 2: half octave, 7x7 MLP on P2
        (38, 0),  # log2 38 = 5.248: nearer 5 than 5.5
        (39, 1),  # log2 39 = 5.285: nearer 5.5
        (64, 2),
        (128 * SQRT2, 5),  # the appendix's example: 7x7 MLP on P4
        (512, 8),
        (10, 0),  # below the smallest scale: the smallest head
        (2000, 9),  # above the largest: the largest head
    ]
    for side, head in cases:
        # Wide and tall boxes: the scale is the larger side.
        for box in ([0, 0, side, side / 3], [0, 0, side / 4, side]):
            assert int(assign_heads(tf.constant([box], tf.float32), scales)[0]) == head, side
    boxes = [[0, 0, s, s / 2] for s, _ in cases]
    expected = [reference_head(b, PAPER_SCALES, 2) for b in boxes]
    np.testing.assert_array_equal(assign_heads(tf.constant(boxes, tf.float32), scales), expected)


def test_positives_are_the_cells_within_one_cell_of_the_centre():
    features = pyramid((256, 256))
    stage = SegmentProposals(hidden_dim=4)
    windows = stage.windows(features, tf.constant([[256, 256]]))
    # Scale 64 -> head 2 (5x5 MLP on P3, stride 8); centre (100, 60): cell centres within
    # 8 px are rows 11..13 ((r + 0.5) 8 = 92, 100, 108) and columns 6..8 (52, 60, 68).
    box = [100 - 32, 60 - 20, 100 + 32, 60 + 20]
    labels, matched = segment_targets(
        tf.constant([[box]], tf.float32),
        tf.constant([[0]]),
        windows["centers"],
        windows["strides"],
        windows["heads"],
        stage.scales,
        windows["candidates"],
    )
    positive = np.flatnonzero(labels[0].numpy() == 1)
    heads = windows["heads"].numpy()[positive]
    assert set(heads) == {2}
    cells = {
        (round(cy / 8 - 0.5), round(cx / 8 - 0.5))
        for cy, cx in windows["centers"].numpy()[positive]
    }
    assert cells == {(r, c) for r in (11, 12, 13) for c in (6, 7, 8)}
    assert (matched[0].numpy()[positive] == 0).all()
    # Every other window of the valid image is a negative (also those of other scales).
    assert (labels[0].numpy() != -1).all()


def test_target_assignment_matches_the_numpy_reference():
    image_size = (200, 232)  # padded to 256 x 256: windows beyond the image are ignored
    features = pyramid((256, 256))
    boxes = [
        [10, 10, 42, 30],  # scale 32: P2 5x5
        [16, 12, 46, 40],  # scale 30 near the first one: same head, nearer-centre rule
        [60, 100, 105, 130],  # scale 45: P2 7x7 (half octave)
        [100, 20, 140, 60],  # scale 40: nearest in log space to 45.25 -> P2 7x7
        [20, 120, 150, 180],  # scale 130: P4 5x5
        [0, 0, 199, 231],  # scale 231: P5 5x5 (256) vs P4 7x7 (181): log-nearer 256
        [5, 5, 15, 15],  # scale 10: smallest head
        [0, 0, 0, 0],  # padding
    ]
    classes = [0, 1, 2, 0, 1, 2, 0, -1]
    stage = SegmentProposals(hidden_dim=4)
    windows = stage.windows(features, tf.constant([image_size]))
    labels, matched = segment_targets(
        tf.constant([boxes], tf.float32),
        tf.constant([classes]),
        windows["centers"],
        windows["strides"],
        windows["heads"],
        stage.scales,
        windows["candidates"],
    )
    ref = reference_windows(features, PAPER_SCALES, 2)
    np.testing.assert_allclose(windows["centers"].numpy(), [w[:2] for w in ref])
    np.testing.assert_array_equal(windows["heads"].numpy(), [w[3] for w in ref])
    sides = [w[4] for w in ref]
    np.testing.assert_allclose(
        windows["boxes"].numpy(),
        [[cy - s / 2, cx - s / 2, cy + s / 2, cx + s / 2] for (cy, cx, *_), s in zip(ref, sides)],
        rtol=1e-6,
    )
    ref_labels, ref_matched = reference_labels(ref, boxes, classes, image_size, PAPER_SCALES, 2)
    np.testing.assert_array_equal(labels[0].numpy(), ref_labels)
    np.testing.assert_array_equal(matched[0].numpy(), ref_matched)
    assert (ref_labels == -1).any() and (ref_labels == 0).any()
    # Every real object has positives; the two close ones share windows of head 0.
    assert set(ref_matched[ref_labels == 1]) == {0, 1, 2, 3, 4, 5, 6}


def test_window_sides_and_mask_targets_in_the_window():
    features = pyramid((256, 256))
    stage = SegmentProposals(hidden_dim=4)
    windows = stage.windows(features, tf.constant([[256, 256]]))
    heads = windows["heads"].numpy()
    boxes = windows["boxes"].numpy()
    sides = boxes[:, 2] - boxes[:, 0]
    # 25% padding: 40 .. 640 pixels for the 5x5 MLP, sqrt 2 larger for the 7x7 MLP.
    for head, side in enumerate([40, 40 * SQRT2, 80, 80 * SQRT2, 160, 160 * SQRT2, 320,
                                 320 * SQRT2, 640, 640 * SQRT2]):  # fmt: skip
        np.testing.assert_allclose(sides[heads == head], side, rtol=1e-5)
    # A rectangle object (box-frame mask of ones) seen in one of its positive windows: a
    # cell of the 14x14 target is 1 when the object covers most of it.
    gt = np.array([[70, 52, 121, 84]], np.float32)  # scale 51: P2 7x7 (45.25)
    labels, matched = segment_targets(
        tf.constant(gt[None]), tf.constant([[0]]), windows["centers"], windows["strides"],
        windows["heads"], stage.scales, windows["candidates"],
    )  # fmt: skip
    positive = np.flatnonzero(labels[0].numpy() == 1)
    assert len(positive) >= 4
    targets = mask_targets(
        tf.ones([1, 1, 32, 32], tf.uint8),
        tf.constant(gt[None]),
        tf.constant(boxes[positive][None]),
        tf.constant(matched.numpy()[:, positive]),
        14,
    ).numpy()[0]
    for window, target in zip(boxes[positive], targets):
        y1, x1, y2, x2 = window
        cell = (y2 - y1) / 14
        edges_y = y1 + cell * np.arange(15)
        edges_x = x1 + cell * np.arange(15)
        cover_y = (
            np.clip(np.minimum(edges_y[1:], gt[0, 2]) - np.maximum(edges_y[:-1], gt[0, 0]), 0, None)
            / cell
        )
        cover_x = (
            np.clip(np.minimum(edges_x[1:], gt[0, 3]) - np.maximum(edges_x[:-1], gt[0, 1]), 0, None)
            / cell
        )
        coverage = cover_y[:, None] * cover_x[None, :]
        clear = np.abs(coverage - 0.5) > 0.2
        np.testing.assert_array_equal(target[clear], (coverage >= 0.5)[clear])
        assert target.sum() > 0 and target.sum() < 196


# ------------------------------------------------------------------------------- losses


def _targets(boxes, classes, size=32):
    count = len(boxes)
    return {
        "gt_boxes": tf.constant([boxes], tf.float32),
        "gt_classes": tf.constant([classes], tf.int32),
        "gt_masks": tf.ones([1, count, size, size], tf.uint8),
        "seed": tf.constant([7], tf.int64),
    }


def test_losses_against_a_reference_and_negatives_train_only_the_score():
    features = pyramid((64, 64), seed=1)
    image_size = tf.constant([[64, 64]])
    # Sample every window (at most all positives), so the losses cover all of them.
    stage = SegmentProposals(
        hidden_dim=8, batch_size_per_image=10_000, positive_fraction=1.0, num_proposals=10
    )
    boxes, classes = [[10, 10, 40, 36], [30, 20, 50, 60], [0, 0, 0, 0]], [0, 1, -1]
    stage(features, image_size)
    for layer in stage.mask:  # zero mask logits: every pixel's BCE is log 2
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    _, losses = stage(features, image_size, targets=_targets(boxes, classes))

    ref = reference_windows(features, PAPER_SCALES, 2)
    labels, _ = reference_labels(ref, boxes, classes, (64, 64), PAPER_SCALES, 2)
    logits = []
    for key in sorted(features, key=lambda k: int(k[1:])):
        for hidden, score in zip(stage.hidden, stage.score):
            logits.append(score(hidden(features[key])).numpy().reshape(-1))
    logits = np.concatenate(logits).astype(np.float64)
    sampled = labels >= 0
    y = (labels == 1).astype(np.float64)
    bce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    np.testing.assert_allclose(losses["loss_segment_score"], bce[sampled].mean(), rtol=1e-5)
    positives = int((labels == 1).sum())
    assert positives > 0
    np.testing.assert_allclose(
        losses["loss_segment_mask"], 10.0 * math.log(2.0) * positives / sampled.sum(), rtol=1e-5
    )

    # Gradients: the mask loss reaches only the mask layers and the shared hidden convs,
    # and without positives (no objects) nothing at all; the score loss never the masks.
    def gradients(targets, key):
        with tf.GradientTape() as tape:
            loss = stage(features, image_size, targets=targets)[1][key]
        variables = {v.path: v for v in stage.trainable_variables}
        grads = tape.gradient(loss, list(variables.values()))
        return {
            path: 0.0 if g is None else float(tf.reduce_max(tf.abs(g)))
            for path, g in zip(variables, grads)
        }

    mask_grads = gradients(_targets(boxes, classes), "loss_segment_mask")
    assert all(v == 0.0 for p, v in mask_grads.items() if "_score" in p)
    assert any(v > 0.0 for p, v in mask_grads.items() if "_mask" in p)
    empty = gradients(_targets([[0, 0, 0, 0]], [-1]), "loss_segment_mask")
    assert all(v == 0.0 for v in empty.values())
    score_grads = gradients(_targets(boxes, classes), "loss_segment_score")
    assert all(v == 0.0 for p, v in score_grads.items() if "_mask" in p)
    assert any(v > 0.0 for p, v in score_grads.items() if "_score" in p)


# ------------------------------------------------------------------------------- inference


def test_inference_ranks_all_windows_by_score_without_nms():
    features = pyramid((64, 48), seed=2)
    image_size = tf.constant([[64, 40]])
    stage = SegmentProposals(hidden_dim=8, num_proposals=40)
    outputs, losses = stage(features, image_size)
    assert losses == {}
    assert outputs["proposal_masks"].shape == (1, 40, 14, 14)
    windows = stage.windows(features, image_size)
    logits, hidden_rows = [], []
    for key in sorted(features, key=lambda k: int(k[1:])):
        for hidden, score in zip(stage.hidden, stage.score):
            h = hidden(features[key])
            logits.append(score(h).numpy().reshape(-1))
            hidden_rows.append((h.numpy().reshape(-1, 8), len(hidden_rows) % 2))
    logits = np.concatenate(logits)
    candidates = windows["candidates"].numpy()[0]
    order = np.argsort(-np.where(candidates, logits, -np.inf), kind="stable")[:40]
    np.testing.assert_allclose(
        outputs["proposal_scores"][0], 1 / (1 + np.exp(-logits[order])), rtol=1e-5
    )
    np.testing.assert_allclose(outputs["proposals"][0], windows["boxes"].numpy()[order])
    assert outputs["proposal_valid"].numpy().all()
    # The best proposal's mask: its MLP's mask layer on its hidden vector.
    rows = np.concatenate([r for r, _ in hidden_rows])
    mlp = np.concatenate([np.full(len(r), j) for r, j in hidden_rows])[order[0]]
    expected = tf.sigmoid(stage.mask[mlp](rows[order[0]][None])).numpy().reshape(14, 14)
    np.testing.assert_allclose(outputs["proposal_masks"][0, 0], expected, rtol=1e-5, atol=1e-6)


def test_fewer_windows_than_proposals_are_padded_invalid():
    features = pyramid((64, 64))
    stage = SegmentProposals(hidden_dim=4, num_proposals=1000)
    outputs, _ = stage(features, tf.constant([[64, 64]]))
    valid = outputs["proposal_valid"].numpy()[0]
    count = int(tf.reduce_sum(tf.cast(stage.windows(features, [[64, 64]])["candidates"], tf.int32)))
    assert valid.sum() == count == 2 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    assert not valid[count:].any() and (outputs["proposal_masks"].numpy()[0, count:] == 0).all()


def test_optional_nms_over_the_masks_tight_boxes():
    features = pyramid((64, 64), seed=3)
    stage = SegmentProposals(hidden_dim=8, num_proposals=30, nms_threshold=0.5, pre_nms_topk=200)
    outputs, _ = stage(features, tf.constant([[64, 64]]))
    valid = outputs["proposal_valid"].numpy()[0]
    scores = outputs["proposal_scores"].numpy()[0][valid]
    assert (np.diff(scores) <= 0).all()
    boxes = mask_boxes(outputs["proposal_masks"], outputs["proposals"]).numpy()[0][valid]
    y1, x1, y2, x2 = boxes.T
    inter_h = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
    inter_w = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
    inter = inter_h * inter_w
    area = (y2 - y1) * (x2 - x1)
    iou = inter / np.maximum(area[:, None] + area - inter, 1e-9)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.5 + 1e-5


def test_mask_boxes_are_the_tight_boxes_of_the_cells_above_threshold():
    masks = np.zeros((1, 2, 14, 14), np.float32)
    masks[0, 0, 3:6, 2:11] = 0.9
    windows = np.array([[[0, 0, 28, 14], [10, 10, 24, 24]]], np.float32)
    boxes = mask_boxes(tf.constant(masks), tf.constant(windows)).numpy()[0]
    np.testing.assert_allclose(boxes[0], [6, 2, 12, 11])  # 2 px rows, 1 px columns
    np.testing.assert_allclose(boxes[1], [17, 17, 17, 17])  # empty: the window's centre


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="canonical_scales"):
        SegmentProposals(canonical_scales=())
    with pytest.raises(ValueError, match="window_sizes"):
        SegmentProposals(window_sizes=(0,))
    with pytest.raises(ValueError, match="canonical_scales"):
        SegmentProposals(canonical_scales=(32.0,))(pyramid((64, 64)), tf.constant([[64, 64]]))


# ---------------------------------------------------------------------------- whole model


def tiny_segment_model() -> MaskRCNN:
    return MaskRCNN(
        normalizer=ImageNormalization("RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        backbone=TinyBackbone(8),
        fpn=FPN(16),
        rpn=SegmentProposals(
            canonical_scales=(16.0, 32.0, 64.0, 128.0, 256.0),
            hidden_dim=16,
            batch_size_per_image=32,
            num_proposals=100,
            name="segment_proposals",
        ),
    )


def test_model_trains_predicts_and_survives_the_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    masks, classes, image = three_shapes()
    dataset = pipeline_batches([decoded_example(image, masks, classes)])
    model = tiny_segment_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    history = model.fit(dataset, epochs=1, verbose=0)
    assert model.loss_names == ("loss_segment_score", "loss_segment_mask")
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    features, _ = next(iter(dataset))
    before = model(features)
    assert before["proposal_masks"].shape == (1, 100, 14, 14)
    assert int(before["num_proposals"][0]) == 100
    path = tmp_path / "segments.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.rpn, SegmentProposals)
    assert json.dumps(loaded.get_config()) == json.dumps(model.get_config())
    after = loaded(features)
    for key in ("proposals", "proposal_scores", "proposal_masks", "num_proposals"):
        np.testing.assert_array_equal(after[key].numpy(), before[key].numpy(), err_msg=key)


def test_layer_config_round_trip():
    stage = SegmentProposals(hidden_dim=8, num_proposals=20, nms_threshold=0.6, pre_nms_topk=50)
    assert_round_trip(stage, pyramid((64, 64)), tf.constant([[64, 64]]))


# ------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "name", ["segment_proposals_r50_fpn_1x_coco.yaml", "segment_proposals_shapes_tiny.yaml"]
)
def test_configs_build_the_segment_proposal_stage(name):
    # No ImageNet weights file here.
    config = load_config(
        Path(__file__).parents[2] / "configs" / name, ["model.backbone.weights=null"]
    )
    model = build_mask_rcnn(config.model)
    assert isinstance(model.rpn, SegmentProposals) and model.roi_heads is None
    stage = config.model.segment_proposals
    assert model.rpn.get_config()["window_sizes"] == stage.window_sizes
    if name.endswith("coco.yaml"):  # the paper's settings
        assert config.model.fpn.num_channels == 128
        assert stage == SegmentProposalsConfig()
        assert (stage.window_sizes, stage.hidden_dim, stage.mask_size) == ((5, 7), 512, 14)
        assert (stage.batch_size_per_image, stage.positive_fraction) == (128, 0.25)
        assert (stage.mask_loss_weight, stage.num_proposals, stage.nms_threshold) == (
            10,
            1000,
            None,
        )


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.segment_proposals replaces the RPN"):
        ModelConfig(segment_proposals=SegmentProposalsConfig(), instance_heads={})
    for key, value in [
        ("window_sizes", "[0]"),
        ("canonical_scales", "[64, 32, 128, 256, 512]"),
        ("positive_fraction", "0"),
        ("pre_nms_topk", "10"),
        ("nms_threshold", "1.5"),
    ]:
        with pytest.raises(ConfigError, match=f"model.segment_proposals.{key}"):
            load_config(
                overrides=[
                    "model.box_head=null",
                    "model.mask_head=null",
                    f"model.segment_proposals.{key}={value}",
                ]
            )
    config = load_config(
        overrides=[
            "model.box_head=null",
            "model.mask_head=null",
            "model.segment_proposals.canonical_scales=[32, 64]",
        ]
    )
    with pytest.raises(ValueError, match="model.segment_proposals.canonical_scales has 2"):
        build_mask_rcnn(config.model)
