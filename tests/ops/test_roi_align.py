"""RoIAlign (custom op and pure-TF twin) against a scalar NumPy reference and hand-computed
cases; gradients against finite differences; custom vs tf; bad input."""

from __future__ import annotations

import types

import numpy as np
import pytest
import tensorflow as tf

# Private, but the switch kmask.native.custom_ops.status reads.
from tensorflow.python.framework import config as framework_config

from kmask.native import custom_ops
from kmask.ops import assign_levels, multi_level_roi_align, roi_align
from kmask.ops.roi_align import resolve_implementation
from tests.ops.roi_align_reference import roi_align_reference

IMPLEMENTATIONS = ["custom", "tf"]


@pytest.fixture(scope="module", autouse=True)
def _custom_op_built() -> None:
    assert custom_ops.load() is not None, "the custom op must build on the test machine"


def random_boxes(
    rng: np.random.Generator, count: int, height: float, width: float, max_size: float
) -> np.ndarray:
    """(y1, x1, y2, x2) boxes, some partly outside the map, inside [-5, H+5]."""
    y1 = rng.uniform(-5, height + 5, count)
    x1 = rng.uniform(-5, width + 5, count)
    return np.stack(
        [y1, x1, y1 + rng.uniform(0, max_size, count), x1 + rng.uniform(0, max_size, count)], -1
    ).astype(np.float32)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "aligned, first_row", [(False, [7.5, 8.0, 8.5, 9.0]), (True, [4.5, 5.0, 5.5, 6.0])]
)
def test_hand_computed_5x5(implementation: str, aligned: bool, first_row: list) -> None:
    # 5x5 arange map, box (1,1)-(3,3), 4x4 output. aligned=False: the RoI spans [1, 3] with
    # bins of 0.5 and 1 sample (ceil(2/4)) at bin centres 1.25, 1.75, ...: value 5y + x,
    # so the first row is 5*1.25 + (1.25, 1.75, 2.25, 2.75) = 7.5, 8, 8.5, 9 and rows step
    # 2.5. aligned=True shifts everything by -0.5: 4.5, 5, 5.5, 6.
    features = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = roi_align(
        features, [[1.0, 1.0, 3.0, 3.0]], [0], 4, aligned=aligned, implementation=implementation
    ).numpy()[0, :, :, 0]
    expected = np.array(first_row)[None, :] + 2.5 * np.arange(4)[:, None]
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
def test_matches_numpy_reference(
    rng: np.random.Generator, implementation: str, sampling_ratio: int, aligned: bool
) -> None:
    features = rng.normal(size=(3, 12, 17, 5)).astype(np.float32)
    boxes = random_boxes(rng, 40, 24, 34, 30)  # spatial scale 0.5: map is 12x17
    boxes[0] = [-30, -30, -20, -20]  # wholly outside: samples < -1 contribute zero
    boxes[1] = [-3, -3, 40, 50]  # larger than the map on all sides
    indices = rng.integers(0, 3, 40).astype(np.int32)
    out = roi_align(
        features,
        boxes,
        indices,
        (5, 4),
        spatial_scale=0.5,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        implementation=implementation,
    ).numpy()
    expected = roi_align_reference(features, boxes, indices, (5, 4), 0.5, sampling_ratio, aligned)
    assert out.shape == (40, 5, 4, 5)
    np.testing.assert_allclose(out, expected, atol=2e-5)
    np.testing.assert_array_equal(out[0], 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_empty_zero_area_and_non_finite_boxes(implementation: str) -> None:
    features = tf.constant(np.ones((2, 6, 6, 3), np.float32))
    empty = roi_align(
        features, tf.zeros([0, 4]), tf.zeros([0], tf.int32), (7, 5), implementation=implementation
    )
    assert empty.shape == (0, 7, 5, 3)

    boxes = tf.constant(
        [
            [2.0, 2.0, 2.0, 2.0],  # zero area
            [3.0, 1.0, 3.0, 5.0],  # zero height
            [np.nan, 1.0, 3.0, 3.0],
            [1.0, -np.inf, 3.0, 3.0],
            [1.0, 1.0, np.inf, 3.0],
            [1.0, 1.0, 4.0, 4.0],
        ]
    )
    indices = tf.constant([0, 1, 0, 1, 0, 1])
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = roi_align(features, boxes, indices, 2, aligned=True, implementation=implementation)
        loss = tf.reduce_sum(out[:5])
    np.testing.assert_array_equal(out.numpy()[:5], 0.0)
    np.testing.assert_allclose(out.numpy()[5], 1.0, atol=1e-6)
    np.testing.assert_array_equal(tape.gradient(loss, features).numpy(), 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradient_finite_differences_float64(rng: np.random.Generator, implementation: str) -> None:
    features = tf.constant(rng.normal(size=(2, 7, 8, 2)))
    boxes = tf.constant([[1.0, 1.0, 5.5, 6.0], [-1.5, 2.0, 4.0, 9.5], [0.3, 0.2, 2.0, 2.5]])
    indices = tf.constant([0, 1, 1])

    def pooled(f: tf.Tensor) -> tf.Tensor:
        return roi_align(
            f,
            boxes,
            indices,
            (3, 2),
            spatial_scale=1.0,
            sampling_ratio=0,
            aligned=False,
            implementation=implementation,
        )

    theoretical, numerical = tf.test.compute_gradient(pooled, [features])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_custom_matches_tf_forward_and_gradient(rng: np.random.Generator) -> None:
    features = tf.constant(rng.normal(size=(2, 25, 30, 16)).astype(np.float32))
    boxes = tf.constant(random_boxes(rng, 64, 100, 120, 80))
    indices = tf.constant(rng.integers(0, 2, 64).astype(np.int32))
    upstream = tf.constant(rng.normal(size=(64, 7, 7, 16)).astype(np.float32))
    results = {}
    for implementation in IMPLEMENTATIONS:
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = roi_align(
                features, boxes, indices, 7, spatial_scale=0.25, implementation=implementation
            )
            loss = tf.reduce_sum(out * upstream)
        results[implementation] = (out.numpy(), tape.gradient(loss, features).numpy())
    np.testing.assert_allclose(results["custom"][0], results["tf"][0], atol=1e-5)
    np.testing.assert_allclose(results["custom"][1], results["tf"][1], atol=1e-4)


def test_cpu_gradient_is_deterministic(rng: np.random.Generator) -> None:
    features = tf.constant(rng.normal(size=(1, 20, 20, 40)).astype(np.float32))
    boxes = tf.constant(random_boxes(rng, 200, 20, 20, 15))  # heavy overlap
    indices = tf.zeros([200], tf.int32)
    grads = []
    for _ in range(3):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(
                roi_align(features, boxes, indices, 7, implementation="custom") ** 2
            )
        grads.append(tape.gradient(loss, features).numpy())
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_array_equal(grads[0], grads[2])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype, tolerance", [(tf.float16, 5e-3), (tf.bfloat16, 3e-2)])
def test_half_precision_against_float32(
    rng: np.random.Generator, implementation: str, dtype: tf.DType, tolerance: float
) -> None:
    # Stated tolerance: the half-precision result equals the float32 result on the same
    # (rounded) input up to one rounding of the output (float32 accumulation inside):
    # |x| < ~3 here, float16 step ~2e-3, bfloat16 step ~1.6e-2.
    half = tf.cast(rng.normal(size=(2, 10, 12, 8)), dtype)
    boxes = tf.constant(random_boxes(rng, 20, 10, 12, 8))
    indices = tf.constant(rng.integers(0, 2, 20).astype(np.int32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(half)
        reference_input = tf.cast(half, tf.float32)
        tape.watch(reference_input)
        out = roi_align(half, boxes, indices, 4, implementation=implementation)
        reference = roi_align(reference_input, boxes, indices, 4, implementation=implementation)
        loss, reference_loss = tf.reduce_sum(out), tf.reduce_sum(reference)
    assert out.dtype == dtype
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), reference.numpy(), atol=tolerance)
    grad = tape.gradient(loss, half)
    assert grad.dtype == dtype
    np.testing.assert_allclose(
        tf.cast(grad, tf.float32).numpy(),
        tape.gradient(reference_loss, reference_input).numpy(),
        atol=tolerance,
    )


def test_tf_twin_compiles_under_xla(rng: np.random.Generator) -> None:
    features = tf.constant(rng.normal(size=(2, 16, 16, 4)).astype(np.float32))
    boxes = tf.constant(random_boxes(rng, 10, 16, 16, 12))
    indices = tf.constant(rng.integers(0, 2, 10).astype(np.int32))

    @tf.function(jit_compile=True)
    def pooled_and_grad(f: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = roi_align(f, boxes, indices, 3, implementation="tf")
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, f)

    out, grad = pooled_and_grad(features)
    np.testing.assert_allclose(
        out.numpy(),
        roi_align_reference(features.numpy(), boxes.numpy(), indices.numpy(), (3, 3)),
        atol=1e-5,
    )
    with tf.GradientTape() as tape:
        tape.watch(features)
        eager = roi_align(features, boxes, indices, 3, implementation="custom")
        loss = tf.reduce_sum(eager * eager)
    np.testing.assert_allclose(grad.numpy(), tape.gradient(loss, features).numpy(), atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bad_input_raises_naming_the_argument(implementation: str) -> None:
    features = tf.zeros([2, 5, 5, 3])
    box = tf.constant([[0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(ValueError, match="output_size"):
        roi_align(features, box, [0], (-1, 2), implementation=implementation)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="features"):
        roi_align(tf.zeros([5, 5, 3]), box, [0], 2, implementation=implementation)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="boxes"):
        roi_align(features, tf.zeros([1, 5]), [0], 2, implementation=implementation)
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_indices"):
        roi_align(features, box, [2], 2, implementation=implementation)
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_indices"):
        roi_align(features, box, [-1], 2, implementation=implementation)


def test_raw_op_rejects_bad_attributes_and_shapes() -> None:
    op = custom_ops.load()
    box = tf.constant([[0.0, 0.0, 2.0, 2.0]])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="output_size"):
        op.kmask_roi_align(tf.zeros([1, 4, 4, 1]), box, [0], pooled_height=-2, pooled_width=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_indices"):
        op.kmask_roi_align(tf.zeros([1, 4, 4, 1]), box, [0, 0], pooled_height=2, pooled_width=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="grads"):
        op.kmask_roi_align_grad(
            tf.zeros([1, 3, 3, 1]), box, [0], [1, 4, 4, 1], pooled_height=2, pooled_width=2
        )


@pytest.mark.parametrize(
    "side, level",
    [
        (111.9, 2),
        (112.0, 3),
        (223.9, 3),
        (224.0, 4),
        (447.9, 4),
        (448.0, 5),
        (2000.0, 5),
        (10.0, 2),
    ],
)
def test_level_assignment_boundaries(side: float, level: int) -> None:
    boxes = tf.constant([[10.0, 20.0, 10.0 + side, 20.0 + side]])
    assert int(assign_levels(boxes, 2, 5)[0]) == level


def test_level_assignment_of_degenerate_boxes() -> None:
    boxes = tf.constant([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 1.0, 1.0], [np.nan, 0, 1, 1]])
    np.testing.assert_array_equal(assign_levels(boxes, 2, 5).numpy(), [2, 2, 2])


def test_multilevel_matches_per_box_reference(rng: np.random.Generator) -> None:
    height, width = 256, 192
    pyramid = {
        f"P{k}": rng.normal(size=(2, height >> k, width >> k, 3)).astype(np.float32)
        for k in range(2, 6)
    }
    boxes = random_boxes(rng, 2 * 12, height, width, 300).reshape(2, 12, 4)
    boxes[0, 0] = [10, 10, 10, 10]  # padding-like zero box
    levels = assign_levels(boxes, 2, 5).numpy()
    expected = np.stack(
        [
            np.concatenate(
                [
                    roi_align_reference(
                        pyramid[f"P{levels[b, n]}"],
                        boxes[b, n : n + 1],
                        [b],
                        (7, 7),
                        2.0 ** -levels[b, n],
                    )
                    for n in range(12)
                ]
            )
            for b in range(2)
        ]
    )
    assert len(set(levels.ravel())) >= 3, "the test should cover several levels"
    for implementation in IMPLEMENTATIONS:
        out = multi_level_roi_align(pyramid, boxes, 7, implementation=implementation).numpy()
        assert out.shape == (2, 12, 7, 7, 3)
        np.testing.assert_allclose(out, expected, atol=2e-5)


def test_multilevel_gradients_agree(rng: np.random.Generator) -> None:
    pyramid = {
        f"P{k}": tf.constant(rng.normal(size=(2, 128 >> k, 96 >> k, 4)).astype(np.float32))
        for k in range(2, 6)
    }
    boxes = tf.constant(random_boxes(rng, 2 * 16, 128, 96, 200).reshape(2, 16, 4))
    grads = []
    for implementation in IMPLEMENTATIONS:
        with tf.GradientTape() as tape:
            tape.watch(pyramid)
            loss = tf.reduce_sum(
                multi_level_roi_align(pyramid, boxes, 5, implementation=implementation) ** 2
            )
        grads.append(tape.gradient(loss, pyramid))
    for key in pyramid:
        np.testing.assert_allclose(grads[0][key].numpy(), grads[1][key].numpy(), atol=1e-4)


def test_multilevel_tf_compiles_under_xla(rng: np.random.Generator) -> None:
    pyramid = {
        f"P{k}": tf.constant(rng.normal(size=(1, 64 >> k, 64 >> k, 2)).astype(np.float32))
        for k in range(2, 6)
    }
    boxes = tf.constant(random_boxes(rng, 8, 64, 64, 70).reshape(1, 8, 4))

    def pooled_and_grad(pyramid: dict, implementation: str) -> tuple[tf.Tensor, dict]:
        with tf.GradientTape() as tape:
            tape.watch(pyramid)
            out = multi_level_roi_align(pyramid, boxes, 4, implementation=implementation)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, pyramid)

    compiled = tf.function(lambda p: pooled_and_grad(p, "tf"), jit_compile=True)
    (out, grads), (expected, expected_grads) = compiled(pyramid), pooled_and_grad(pyramid, "custom")
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    for key in pyramid:
        np.testing.assert_allclose(grads[key].numpy(), expected_grads[key].numpy(), atol=1e-5)


def test_multilevel_rejects_gapped_levels() -> None:
    pyramid = {"P2": tf.zeros([1, 8, 8, 1]), "P4": tf.zeros([1, 2, 2, 1])}
    with pytest.raises(ValueError, match="consecutive"):
        multi_level_roi_align(pyramid, tf.zeros([1, 1, 4]), 2)


def test_the_0_1_name_multilevel_roi_align_is_the_same_function() -> None:
    from kmask.ops import multilevel_roi_align

    assert multilevel_roi_align is multi_level_roi_align


@pytest.mark.parametrize(
    "determinism, gpus, expected",
    [(True, True, "tf"), (False, True, "custom"), (True, False, "custom")],
)
def test_auto_takes_the_twin_under_op_determinism_with_gpus(
    monkeypatch: pytest.MonkeyPatch, determinism: bool, gpus: bool, expected: str
) -> None:
    # The custom op's CUDA gradient sums with atomics and refuses to run under op
    # determinism (train.deterministic): "auto" must not pick it then.
    monkeypatch.delenv("KMASK_ROI_ALIGN", raising=False)
    # A custom op built with CUDA kernels, as status() sees it.
    monkeypatch.setattr(custom_ops, "load", lambda: object())
    built = types.SimpleNamespace(library="kmask_roi_align.so", cuda=True, describe=str)
    monkeypatch.setitem(custom_ops._loaded, "build", built)
    devices = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")] if gpus else []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices)
    monkeypatch.setattr(framework_config, "is_op_determinism_enabled", lambda: determinism)
    assert resolve_implementation("auto") == expected
