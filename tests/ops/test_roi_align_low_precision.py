"""RoIAlign on bfloat16 and float16 features (custom op and pure-TF twin): float32 inside,
one rounding of the output and of the gradient, in the features' dtype.

Tolerance. Both implementations read the half-precision features as float32, accumulate in
float32 and round once, so on features that are already half-precision values the output is
the float32 result rounded to nearest: ``|out - ref| <= u |ref|`` with the unit roundoff
``u = 2**-8`` for bfloat16 (8 significant bits) and ``2**-11`` for float16 (11), i.e. half a
unit in the last place, relative to the output's own magnitude. The float32 sums before that
rounding differ from the reference's by an error relative to the sum of the magnitudes of
the terms, not to the result (the features have both signs and cancel): ``F32_SLACK * mag``
where ``mag`` is the same pooling of ``|features|`` (for the gradient, of ``|upstream|``);
``F32_SLACK = 2**-20`` is 16 float32 roundoffs, far below ``u``. The features span five
decades (|x| from about 1e-2 to 1e3), so a tolerance on the absolute scale of the large
values would say nothing about the small ones. Accumulating in the half dtype instead of
float32 rounds every partial sum, several units in the last place in all: that fails.

References, on the rounded features and upstream gradient:

- ``"float64"``: the scalar NumPy reference (``roi_align_reference``) for the output and
  torchvision's ``roi_align`` autograd for the gradient, both in float64, on boxes whose
  sample coordinates are dyadic (exact in float32). On other boxes the op's float32
  geometry (sample positions off by ~1e-7 px) times the features' slope between pixels
  (up to ~1e3 here) exceeds float16's half unit; that is float32's error, not the dtype's.
- ``"float32"``: the custom op in float32 on random boxes (partly off the map), which is
  the half-precision result before its one rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kmask.native import custom_ops
from kmask.ops import roi_align
from tests.ops.roi_align_reference import roi_align_reference

IMPLEMENTATIONS = ["custom", "tf"]
REFERENCES = ["float64", "float32"]
DTYPES = pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16], ids=["bfloat16", "float16"])
# dtype -> unit roundoff u (half a unit in the last place, relative).
UNIT_ROUNDOFF = {tf.bfloat16: 2.0**-8, tf.float16: 2.0**-11}
F32_SLACK = 2.0**-20
SCALE = 0.5  # spatial_scale: boxes in input pixels, the maps at stride 2
OUTPUT_SIZE = (3, 4)
SHAPE = (2, 9, 13, 6)  # [B, H, W, C]
NUM_BOXES = 16


@pytest.fixture(scope="module", autouse=True)
def _custom_op_built() -> None:
    assert custom_ops.load() is not None, "the custom op must build on the test machine"


def _boxes(rng: np.random.Generator, dyadic: bool) -> np.ndarray:
    """[K, 4] (y1, x1, y2, x2) in input pixels, some partly off the map. ``dyadic``: corners
    on half pixels and bins of 0.5, 1 or 2 feature pixels, so that every sample
    coordinate (adaptive or 2 samples per bin) is exact in float32."""
    _, height, width, _ = SHAPE
    y1 = rng.integers(-8, 2 * (2 * height - 4), NUM_BOXES) / 2
    x1 = rng.integers(-8, 2 * (2 * width - 4), NUM_BOXES) / 2
    if dyadic:
        bins = rng.choice([0.5, 1.0, 2.0], size=(NUM_BOXES, 2))
        box_h, box_w = (bins * np.array(OUTPUT_SIZE) / SCALE).T
    else:
        y1, x1 = y1 + rng.uniform(0, 0.5, NUM_BOXES), x1 + rng.uniform(0, 0.5, NUM_BOXES)
        box_h, box_w = rng.uniform(0, 14, (2, NUM_BOXES))
    return np.stack([y1, x1, y1 + box_h, x1 + box_w], -1).astype(np.float32)


def _case(
    rng: np.random.Generator, dtype: tf.DType, dyadic: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Half-precision features [2, 9, 13, 6] spanning five decades, boxes [K, 4] float32,
    their image indices [K] int32 and a half-precision upstream gradient [K, 3, 4, 6]."""
    magnitude = 10.0 ** rng.uniform(-2, 3, size=SHAPE)
    features = tf.cast(rng.normal(size=SHAPE) * magnitude, dtype)
    indices = tf.constant(rng.integers(0, SHAPE[0], NUM_BOXES).astype(np.int32))
    upstream = tf.cast(rng.normal(size=(NUM_BOXES, *OUTPUT_SIZE, SHAPE[3])) * 10.0, dtype)
    return features, tf.constant(_boxes(rng, dyadic)), indices, upstream


def _as_float64(tensor: tf.Tensor) -> np.ndarray:
    return tf.cast(tensor, tf.float64).numpy()


def _assert_rounded(actual: tf.Tensor, exact: np.ndarray, magnitude: np.ndarray) -> None:
    """``actual`` (half precision) is ``exact`` rounded to nearest, up to float32 slack."""
    u = UNIT_ROUNDOFF[actual.dtype]
    error = np.abs(_as_float64(actual) - exact)
    bound = u * np.abs(exact) + F32_SLACK * magnitude
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (
        f"{actual.dtype.name}: |out - ref| = {error[worst]:.3g} > {bound[worst]:.3g} at "
        f"{worst} (ref {exact[worst]:.6g})"
    )


def _pool(implementation: str, features, boxes, indices, sampling_ratio: int) -> tf.Tensor:
    return roi_align(
        features,
        boxes,
        indices,
        OUTPUT_SIZE,
        spatial_scale=SCALE,
        sampling_ratio=sampling_ratio,
        aligned=True,
        implementation=implementation,
    )


def _pool_and_grad(
    implementation: str, features, boxes, indices, upstream, sampling_ratio: int = 0
) -> tuple[tf.Tensor, tf.Tensor]:
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = _pool(implementation, features, boxes, indices, sampling_ratio)
    return out, tape.gradient(out, features, output_gradients=upstream)


def _torchvision_gradient(
    features: np.ndarray, boxes: np.ndarray, indices: np.ndarray, upstream: np.ndarray
) -> np.ndarray:
    """float64 gradient of sum(roi_align(features) * upstream) w.r.t. the NHWC features
    (adaptive sampling, aligned), from torchvision's autograd on NCHW."""
    torch = pytest.importorskip("torch")
    from torchvision.ops import roi_align as tv_roi_align

    nchw = torch.tensor(features.transpose(0, 3, 1, 2), requires_grad=True)
    rois = torch.tensor(
        np.concatenate([indices[:, None], boxes[:, [1, 0, 3, 2]]], 1), dtype=torch.float64
    )
    pooled = tv_roi_align(nchw, rois, OUTPUT_SIZE, SCALE, 0, aligned=True)
    pooled.backward(torch.tensor(upstream.transpose(0, 3, 1, 2)))
    return nchw.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@DTYPES
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_output_is_the_reference_rounded_once(
    rng: np.random.Generator,
    reference: str,
    implementation: str,
    dtype: tf.DType,
    sampling_ratio: int,
) -> None:
    features, boxes, indices, _ = _case(rng, dtype, dyadic=reference == "float64")
    out = _pool(implementation, features, boxes, indices, sampling_ratio)
    assert out.dtype == dtype
    values = _as_float64(features)
    if reference == "float64":
        args = (boxes.numpy(), indices.numpy(), OUTPUT_SIZE, SCALE, sampling_ratio, True)
        exact = roi_align_reference(values, *args)
        magnitude = roi_align_reference(np.abs(values), *args)
    else:
        exact, magnitude = (
            _as_float64(_pool("custom", tf.constant(v, tf.float32), boxes, indices, sampling_ratio))
            for v in (values, np.abs(values))
        )
    assert np.count_nonzero(exact) > exact.size // 2  # most bins sample the map
    _assert_rounded(out, exact, magnitude)


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@DTYPES
def test_gradient_is_the_reference_rounded_once(
    rng: np.random.Generator, reference: str, implementation: str, dtype: tf.DType
) -> None:
    features, boxes, indices, upstream = _case(rng, dtype, dyadic=reference == "float64")
    _, grad = _pool_and_grad(implementation, features, boxes, indices, upstream)
    assert grad.dtype == dtype
    values, gradient = _as_float64(features), _as_float64(upstream)
    if reference == "float64":
        case = (values, _as_float64(boxes), indices.numpy())
        exact = _torchvision_gradient(*case, gradient)
        magnitude = _torchvision_gradient(*case, np.abs(gradient))
    else:
        features32 = tf.constant(values, tf.float32)
        exact, magnitude = (
            _as_float64(_pool_and_grad("custom", features32, boxes, indices, tf.constant(g))[1])
            for g in (gradient.astype(np.float32), np.abs(gradient).astype(np.float32))
        )
    assert np.count_nonzero(exact) > exact.size // 4  # the boxes cover much of the maps
    _assert_rounded(grad, exact, magnitude)


def test_custom_op_equals_twin_in_bfloat16(rng: np.random.Generator) -> None:
    """Both round the same float32 value (up to float32 slack), so they give the same
    bfloat16 number, or adjacent ones where that value lies at a rounding boundary (rare)."""
    features, boxes, indices, upstream = _case(rng, tf.bfloat16, dyadic=False)
    results = {
        implementation: _pool_and_grad(implementation, features, boxes, indices, upstream)
        for implementation in IMPLEMENTATIONS
    }
    for which in (0, 1):  # output, gradient
        op, twin = (results[implementation][which] for implementation in IMPLEMENTATIONS)
        assert op.dtype == twin.dtype == tf.bfloat16
        # Same-sign bfloat16 numbers are adjacent when their bit patterns differ by one.
        op_bits = op.numpy().view(np.int16).astype(np.int32)
        twin_bits = twin.numpy().view(np.int16).astype(np.int32)
        steps = np.where(np.sign(op_bits) == np.sign(twin_bits), np.abs(op_bits - twin_bits), 2)
        assert np.all((steps <= 1) | (_as_float64(op) == _as_float64(twin)))  # +0 == -0
        assert np.mean(steps == 0) > 0.98
