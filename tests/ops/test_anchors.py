"""Anchors: 15 shapes over P2..P6, centres, ordering."""

import numpy as np
import pytest
import tensorflow as tf

from kmask.modeling.proposals.anchor_generator import AnchorGenerator
from kmask.ops import anchors as anchor_ops
from tests.keras_harness import assert_round_trip

SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
RATIOS = (0.5, 1.0, 2.0)


def test_cell_anchors_areas_and_ratios():
    shapes = set()
    for size in SIZES:
        cells = anchor_ops.cell_anchors(size, RATIOS)
        heights = cells[:, 2] - cells[:, 0]
        widths = cells[:, 3] - cells[:, 1]
        np.testing.assert_allclose(heights * widths, size**2, rtol=1e-5)
        np.testing.assert_allclose(heights / widths, RATIOS, rtol=1e-5)
        np.testing.assert_allclose(cells[:, :2] + cells[:, 2:], 0.0, atol=1e-4)  # centred
        shapes.update((round(h, 3), round(w, 3)) for h, w in zip(heights, widths))
    assert len(shapes) == 15


def test_grid_anchors_centres_and_order():
    anchors = anchor_ops.grid_anchors(2, 3, stride=8, size=32.0, aspect_ratios=RATIOS).numpy()
    assert anchors.shape == (2 * 3 * 3, 4)
    grid = anchors.reshape(2, 3, 3, 4)  # (row, column, anchor) order
    centres = (grid[..., :2] + grid[..., 2:]) / 2
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(centres[i, j], [[(i + 0.5) * 8, (j + 0.5) * 8]] * 3)
    np.testing.assert_allclose(grid[1, 2, 1], [12 - 16, 20 - 16, 12 + 16, 20 + 16])


def test_pyramid_anchors_levels_and_counts():
    shapes = {f"P{k}": (64 // 2**k, 96 // 2**k) for k in range(2, 7)}
    anchors = anchor_ops.pyramid_anchors(shapes, SIZES, RATIOS)
    for k, size in zip(range(2, 7), SIZES):
        a = anchors[f"P{k}"].numpy()
        h, w = shapes[f"P{k}"]
        assert a.shape == (h * w * 3, 4)
        areas = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        np.testing.assert_allclose(areas, size**2, rtol=1e-4)
        np.testing.assert_allclose((a[0, 0] + a[0, 2]) / 2, 0.5 * 2**k)
    with pytest.raises(ValueError, match="anchor sizes"):
        anchor_ops.pyramid_anchors(shapes, SIZES[:4], RATIOS)


def test_strides_from_the_image_as_torchvision_computes_them():
    """160x128 padded: P5 5x4, P6 3x2 (rounded up), so torchvision's P6 strides are
    160 // 3 = 53 rows and 128 // 2 = 64 columns; P2..P5 keep 2**k. Hand-computed centres
    at offset 0, dynamic shapes as in a traced model."""
    shapes = {"P2": (40, 32), "P3": (20, 16), "P4": (10, 8), "P5": (5, 4), "P6": (3, 2)}
    fixed = anchor_ops.pyramid_anchors(shapes, SIZES, RATIOS, offset=0.0)

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)] * 5)
    def traced(*sizes):
        return anchor_ops.pyramid_anchors(
            {name: (size[0], size[1]) for name, size in zip(shapes, sizes)},
            SIZES,
            RATIOS,
            offset=0.0,
            stride_from_image=True,
        )

    image = traced(*(tf.constant(s) for s in shapes.values()))
    for name in ("P2", "P3", "P4", "P5"):
        np.testing.assert_array_equal(image[name].numpy(), fixed[name].numpy())
    centres = image["P6"].numpy().reshape(3, 2, 3, 4)
    centres = (centres[..., :2] + centres[..., 2:]) / 2
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(centres[i, j], [[53 * i, 64 * j]] * 3, atol=1e-4)


def test_anchor_generator_layer_static_dynamic_and_config():
    layer = AnchorGenerator()
    features = {f"P{k}": tf.zeros([2, 128 // 2**k, 64 // 2**k, 4]) for k in range(2, 7)}
    out = layer(features)
    expected = anchor_ops.pyramid_anchors(
        {f"P{k}": (128 // 2**k, 64 // 2**k) for k in range(2, 7)}, SIZES, RATIOS
    )
    dynamic = tf.function(
        layer.call,
        input_signature=[{f"P{k}": tf.TensorSpec([None, None, None, 4]) for k in range(2, 7)}],
    )(features)
    for key in features:
        np.testing.assert_array_equal(out[key].numpy(), expected[key].numpy())
        np.testing.assert_array_equal(dynamic[key].numpy(), expected[key].numpy())
    shapes = layer.compute_output_shape({k: tuple(v.shape) for k, v in features.items()})
    assert shapes["P2"] == (32 * 16 * 3, 4)
    assert_round_trip(layer, features)
    assert layer.num_anchors_per_location == 3


def test_rounded_cell_anchors_match_torchvision_base_anchors():
    # torchvision AnchorGenerator(sizes=(32,), aspect_ratios=(0.5, 1.0, 2.0)) base anchors
    # (x1, y1, x2, y2): [-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]
    # (its ratio is h / w as here); rounded with torch.round.
    rounded = anchor_ops.cell_anchors(32.0, (0.5, 1.0, 2.0), rounded=True)
    expected_xyxy = np.array([[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    np.testing.assert_array_equal(rounded, expected_xyxy[:, [1, 0, 3, 2]])
