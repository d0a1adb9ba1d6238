#!/usr/bin/env python
"""Standalone GPU check of the RoIAlign CUDA kernels, without TensorFlow.

Run on a machine with an NVIDIA GPU and CuPy (torch + torchvision optional)::

    python tests/ops/cuda_check.py

It compiles ``custom_ops/roi_align/roi_align_cuda.cuh`` with CuPy's NVRTC (``cupy.RawModule``),
runs the ``extern "C"`` kernels ``kmask_roi_align_{forward,backward}_{f32,f64,f16,bf16}`` and
compares them with

* the scalar NumPy reference ``tests/ops/roi_align_reference.py`` (forward) and the NumPy
  backward :func:`numpy_roi_align_backward` below (written from the definition; the pytest
  suite checks it against the reference by the adjoint identity);
* ``torchvision.ops.roi_align`` forward and backward, when torch and torchvision import.

It prints the max abs error of every check and ends with one line ``PASS`` or ``FAIL``
(exit status 0 / 1; 2 when CuPy or a GPU is missing).

Tensor conventions (kmask): features NHWC ``[B, H, W, C]``; boxes ``[K, 4]`` float32
``(y1, x1, y2, x2)`` in input pixels (feature coordinate = box * spatial_scale);
box_indices ``[K]`` int32; output ``[K, out_h, out_w, C]``.

The pytest module ``tests/ops/test_roi_align_cuda.py`` imports the helpers of this file; this
file imports neither TensorFlow nor pytest.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys
from collections.abc import Callable

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
CUDA_DIR = REPO / "custom_ops" / "roi_align"
CUDA_HEADER = CUDA_DIR / "roi_align_cuda.cuh"


def _load_reference():
    """Imports tests/ops/roi_align_reference.py by path (no package, TF or pytest needed)."""
    spec = importlib.util.spec_from_file_location(
        "_kmask_roi_align_reference", HERE / "roi_align_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


roi_align_reference = _load_reference().roi_align_reference

# Element-type suffix of the extern "C" kernels -> (storage dtype, accumulation dtype).
KERNEL_DTYPES = {
    "f32": (np.float32, np.float32),
    "f64": (np.float64, np.float64),
    "f16": (np.float16, np.float32),
    "bf16": (np.uint16, np.float32),  # raw bfloat16 bits
}


# ---------------------------------------------------------------------------------------------
# Test inputs.


def make_case(
    rng: np.random.Generator,
    *,
    batch: int = 3,
    height: int = 11,
    width: int = 14,
    channels: int = 3,
    spatial_scale: float = 0.25,
    num_random: int = 9,
    dyadic: bool = False,
    special: bool = True,
    bad_indices: bool = False,
) -> dict:
    """Random RoIAlign inputs.

    Returns a dict with ``features`` float64 ``[B, H, W, C]`` (values k/64 in [-1, 1], exact in
    float16 and bfloat16), ``boxes`` float32 ``[K, 4]`` (y1, x1, y2, x2) in input pixels,
    ``box_indices`` int32 ``[K]`` and ``spatial_scale``.

    Random boxes span [-0.3, 1.1] of the map, so several lie partly outside it. ``special``
    adds a zero-area box, a box wholly outside the map, a NaN box and an infinite box.
    ``bad_indices`` adds boxes whose image index is -1 and ``batch`` (the GPU kernels pool
    zeros for them; the NumPy helpers here treat them the same way).

    ``dyadic`` draws box corners on a 1/8 feature-pixel grid with RoI sizes of at most 8
    feature pixels: with ``spatial_scale`` a power of two and output sizes of 4 every sample
    coordinate is exact in float32, so a float64 kernel must match the float64 reference to
    rounding (1e-10), which a float32 geometry or accumulation could not.
    """
    features = rng.integers(-64, 65, size=(batch, height, width, channels)) / 64.0
    rows = []
    for _ in range(num_random):
        if dyadic:
            y1 = rng.integers(-2 * 8, (height + 1) * 8) / 8.0
            x1 = rng.integers(-2 * 8, (width + 1) * 8) / 8.0
            h = rng.integers(0, 8 * 8 + 1) / 8.0
            w = rng.integers(0, 8 * 8 + 1) / 8.0
        else:
            y1 = rng.uniform(-0.3, 0.9) * height
            x1 = rng.uniform(-0.3, 0.9) * width
            h = rng.uniform(0.05, 0.8) * height
            w = rng.uniform(0.05, 0.8) * width
        rows.append([y1, x1, y1 + h, x1 + w])
    if special:
        rows.append([0.5 * height, 0.25 * width, 0.5 * height, 0.25 * width])  # zero area
        rows.append([-9.0, -9.0, -4.0, -4.0])  # wholly outside ([-1, H] excluded)
        rows.append([math.nan, 1.0, 4.0, 5.0])
        rows.append([1.0, 1.0, math.inf, 5.0])
    boxes = (np.asarray(rows, np.float64) / spatial_scale).astype(np.float32)
    box_indices = rng.integers(0, batch, size=len(boxes)).astype(np.int32)
    if bad_indices:
        extra = np.asarray([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 6.0, 5.0]]) / spatial_scale
        boxes = np.concatenate([boxes, extra.astype(np.float32)])
        box_indices = np.concatenate([box_indices, np.asarray([-1, batch], np.int32)])
    return {
        "features": features,
        "boxes": boxes,
        "box_indices": box_indices,
        "spatial_scale": spatial_scale,
    }


def valid_box_mask(box_indices: np.ndarray, batch: int) -> np.ndarray:
    """[K] bool: box index in [0, batch) (the GPU pools zeros for the others)."""
    return (box_indices >= 0) & (box_indices < batch)


def expected_forward(
    features, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned
) -> np.ndarray:
    """NumPy reference output [K, oh, ow, C] float64; zeros for out-of-range box indices."""
    features = np.asarray(features, np.float64)
    valid = valid_box_mask(box_indices, features.shape[0])
    out = np.zeros((len(boxes), *output_size, features.shape[-1]))
    if valid.any():
        out[valid] = roi_align_reference(
            features,
            boxes[valid],
            box_indices[valid],
            output_size,
            spatial_scale=spatial_scale,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
        )
    return out


# ---------------------------------------------------------------------------------------------
# NumPy backward, written from the definition of the forward (float64 loops).


def _corners(v: float, size: int):
    """Bilinear neighbours of coordinate v on an axis of `size` pixels: [(index, weight)]."""
    if not (-1.0 <= v <= size) or size <= 0:
        return []
    v = max(v, 0.0)
    lo = math.floor(v)
    if lo >= size - 1:
        return [(size - 1, 1.0)]
    frac = v - lo
    return [(lo, 1.0 - frac), (lo + 1, frac)]


def numpy_roi_align_backward(
    grads: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    feature_shape: tuple[int, int, int, int],
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    max_grid: int = 256,
) -> np.ndarray:
    """Gradient of sum(roi_align(features) * grads) w.r.t. features.

    grads [K, oh, ow, C]; boxes [K, 4] (y1, x1, y2, x2) in input pixels; box_indices [K];
    returns float64 [B, H, W, C]. Every output bin is the mean of its samples and every sample
    a bilinear mix of at most four pixels, so the gradient scatters grads[k, ph, pw] / count
    with the same weights. Boxes with a non-finite corner or an index outside [0, B) get none.
    """
    batch, height, width, _ = feature_shape
    out_h, out_w = output_size
    grads = np.asarray(grads, np.float64)
    result = np.zeros(feature_shape)
    offset = 0.5 if aligned else 0.0
    for k, box in enumerate(np.asarray(boxes, np.float64)):
        b = int(box_indices[k])
        if not (0 <= b < batch) or not np.all(np.isfinite(box)):
            continue
        y1, x1, y2, x2 = (float(v) * spatial_scale - offset for v in box)
        roi_h, roi_w = y2 - y1, x2 - x1
        if not aligned:
            roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
        if sampling_ratio > 0:
            grid_h = grid_w = sampling_ratio
        else:
            grid_h = min(max(math.ceil(roi_h / out_h), 0), max_grid)
            grid_w = min(max(math.ceil(roi_w / out_w), 0), max_grid)
        count = grid_h * grid_w
        if count == 0:
            continue
        for ph in range(out_h):
            for pw in range(out_w):
                g = grads[k, ph, pw] / count
                for iy in range(grid_h):
                    y = y1 + roi_h * (ph + (iy + 0.5) / grid_h) / out_h
                    for ix in range(grid_w):
                        x = x1 + roi_w * (pw + (ix + 0.5) / grid_w) / out_w
                        for yi, wy in _corners(y, height):
                            for xi, wx in _corners(x, width):
                                result[b, yi, xi] += wy * wx * g
    return result


# ---------------------------------------------------------------------------------------------
# 16-bit encodings (inputs are chosen exactly representable, so no rounding is needed here).


def to_kernel_storage(values: np.ndarray, suffix: str) -> np.ndarray:
    """float64 values -> host array in the kernel's storage type (bfloat16 as raw bits)."""
    if suffix == "bf16":
        bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
        if np.any(bits & 0xFFFF):
            raise ValueError("values are not exact in bfloat16")
        return (bits >> 16).astype(np.uint16)
    storage = KERNEL_DTYPES[suffix][0]
    converted = np.asarray(values).astype(storage)
    if suffix == "f16" and not np.array_equal(converted.astype(np.float64), values):
        raise ValueError("values are not exact in float16")
    return converted


def from_kernel_storage(values: np.ndarray, suffix: str) -> np.ndarray:
    """Kernel storage (bfloat16 as raw bits) -> float64."""
    if suffix == "bf16":
        return (values.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.asarray(values, np.float64)


def output_tolerance(suffix: str) -> tuple[float, float]:
    """(rtol, atol) of a kernel output against the float64 reference.

    f32: float geometry and accumulation (1e-5, per the RoIAlign contract). f64 on dyadic
    inputs: rounding only. 16-bit outputs: half an ulp of the 16-bit type on top.
    """
    return {
        "f32": (1e-5, 1e-5),
        "f64": (0.0, 1e-10),
        "f16": (2.0**-11, 1e-5),
        "bf16": (2.0**-8, 1e-5),
    }[suffix]


def max_violation(actual, expected, rtol: float, atol: float) -> tuple[float, bool]:
    """(max abs error, whether every |actual - expected| <= atol + rtol * |expected|)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return math.inf, False
    err = np.abs(actual - expected)
    ok = bool(np.all(err <= atol + rtol * np.abs(expected)))
    return (float(err.max()) if err.size else 0.0), ok


# ---------------------------------------------------------------------------------------------
# CuPy.


def cupy_or_reason():
    """(cupy module, None) when CuPy imports and sees a GPU, else (None, reason)."""
    try:
        import cupy
    except (ImportError, RuntimeError, OSError) as exc:  # absent, or a broken CUDA install
        return None, f"cupy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except (RuntimeError, OSError) as exc:  # CUDARuntimeError: no driver or no device
        return None, f"cupy sees no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return None, "cupy sees no CUDA device"
    return cupy, None


def load_cupy_module(cupy, extra_options: tuple[str, ...] = ()):
    """Compiles roi_align_cuda.cuh with NVRTC through cupy.RawModule (NVRTC's default C++
    dialect; the header also compiles as C++11)."""
    code = f'#include "{CUDA_HEADER.name}"\n'
    options = (f"-I{CUDA_DIR}", *extra_options)
    module = cupy.RawModule(code=code, options=options)
    module.compile()
    return module


def _launch(cupy, kernel, n: int, args: tuple) -> None:
    threads = 256
    blocks = max(1, min((n + threads - 1) // threads, 1 << 20))
    kernel((blocks,), (threads,), args)
    cupy.cuda.runtime.deviceSynchronize()


def _scalars(shape, num_boxes, output_size, spatial_scale, sampling_ratio, aligned):
    batch, height, width, channels = shape
    return (
        np.int32(batch),
        np.int32(height),
        np.int32(width),
        np.int32(channels),
        np.int32(num_boxes),
        np.int32(output_size[0]),
        np.int32(output_size[1]),
        np.float32(spatial_scale),
        np.int32(sampling_ratio),
        np.int32(1 if aligned else 0),
    )


def cupy_forward(
    cupy,
    module,
    suffix,
    features,
    boxes,
    box_indices,
    output_size,
    spatial_scale,
    sampling_ratio,
    aligned,
) -> np.ndarray:
    """Runs kmask_roi_align_forward_<suffix>; returns float64 [K, oh, ow, C]."""
    storage = KERNEL_DTYPES[suffix][0]
    feats = cupy.asarray(to_kernel_storage(features, suffix))
    d_boxes = cupy.asarray(np.ascontiguousarray(boxes, np.float32))
    d_idx = cupy.asarray(np.ascontiguousarray(box_indices, np.int32))
    shape = (len(boxes), *output_size, features.shape[-1])
    # Start from NaN (0x7FC0 is a bfloat16 NaN) so that an element the kernel skips shows.
    if suffix == "bf16":
        out = cupy.full(shape, 0x7FC0, dtype=np.uint16)
    else:
        out = cupy.full(shape, np.nan, dtype=storage)
    kernel = module.get_function(f"kmask_roi_align_forward_{suffix}")
    _launch(
        cupy,
        kernel,
        out.size,
        (feats, d_boxes, d_idx, out)
        + _scalars(features.shape, len(boxes), output_size, spatial_scale, sampling_ratio, aligned),
    )
    return from_kernel_storage(cupy.asnumpy(out), suffix)


def cupy_backward(
    cupy,
    module,
    suffix,
    grads,
    boxes,
    box_indices,
    feature_shape,
    output_size,
    spatial_scale,
    sampling_ratio,
    aligned,
    cast: bool = False,
) -> np.ndarray:
    """Runs kmask_roi_align_backward_<suffix> into a zeroed accumulation buffer.

    Returns the float64 accumulation [B, H, W, C]; with ``cast`` (16-bit suffixes) the buffer
    is first cast to the 16-bit type by kmask_roi_align_cast_f32_to_<suffix>.
    """
    accum_dtype = KERNEL_DTYPES[suffix][1]
    d_grads = cupy.asarray(to_kernel_storage(grads, suffix))
    d_boxes = cupy.asarray(np.ascontiguousarray(boxes, np.float32))
    d_idx = cupy.asarray(np.ascontiguousarray(box_indices, np.int32))
    accum = cupy.zeros(feature_shape, accum_dtype)
    kernel = module.get_function(f"kmask_roi_align_backward_{suffix}")
    _launch(
        cupy,
        kernel,
        d_grads.size,
        (d_grads, d_boxes, d_idx, accum)
        + _scalars(feature_shape, len(boxes), output_size, spatial_scale, sampling_ratio, aligned),
    )
    if not cast:
        return cupy.asnumpy(accum).astype(np.float64)
    dst = cupy.zeros(feature_shape, np.float16 if suffix == "f16" else np.uint16)
    cast_kernel = module.get_function(f"kmask_roi_align_cast_f32_to_{suffix}")
    _launch(cupy, cast_kernel, accum.size, (np.int64(accum.size), accum, dst))
    return from_kernel_storage(cupy.asnumpy(dst), suffix)


# ---------------------------------------------------------------------------------------------
# Check matrix shared by this script and the pytest module.

SETTINGS = [  # (aligned, sampling_ratio, spatial_scale, output_size)
    (True, 0, 0.25, (5, 4)),
    (True, 2, 0.25, (5, 4)),
    (False, 0, 1.0, (3, 6)),
    (False, 2, 0.5, (7, 7)),
]
DYADIC_SETTINGS = [  # exact float32 geometry: powers of two only
    (True, 0, 0.25, (4, 4)),
    (False, 2, 0.5, (4, 4)),
    (True, 2, 1.0, (4, 4)),
    (False, 0, 1.0, (4, 4)),
]


def random_values(rng: np.random.Generator, shape, suffix: str) -> np.ndarray:
    """float64 values in [-1, 1] exactly representable in the kernel's element type.

    f64 gets full float64 precision (a float32 load or accumulation would then lose ~1e-8),
    f32 float32-rounded values, 16-bit types multiples of 1/64.
    """
    if suffix == "f64":
        return rng.uniform(-1.0, 1.0, size=shape)
    if suffix == "f32":
        return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32).astype(np.float64)
    return rng.integers(-64, 65, size=shape) / 64.0


def kernel_checks(
    forward: Callable,
    backward: Callable,
    seed: int = 0,
    suffixes: tuple[str, ...] = ("f32", "f64", "f16", "bf16"),
):
    """Yields (name, max_abs_err, ok) for every dtype, setting, forward and backward.

    ``forward(suffix, features, boxes, box_indices, output_size, spatial_scale,
    sampling_ratio, aligned)`` returns float64 [K, oh, ow, C];
    ``backward(suffix, grads, boxes, box_indices, feature_shape, output_size, spatial_scale,
    sampling_ratio, aligned)`` returns the float64 accumulation [B, H, W, C].
    Both run a kernel (CuPy on a GPU, or the host harness of the pytest module).
    """
    for suffix in suffixes:
        rng = np.random.default_rng([seed, list(KERNEL_DTYPES).index(suffix)])
        settings = DYADIC_SETTINGS if suffix == "f64" else SETTINGS
        rtol, atol = output_tolerance(suffix)
        for aligned, ratio, scale, output_size in settings:
            case = make_case(rng, spatial_scale=scale, dyadic=suffix == "f64", bad_indices=True)
            f, boxes, idx = case["features"], case["boxes"], case["box_indices"]
            f = random_values(rng, f.shape, suffix)
            name = f"{suffix} aligned={aligned} ratio={ratio} scale={scale} out={output_size}"
            want = expected_forward(f, boxes, idx, output_size, scale, ratio, aligned)
            got = forward(suffix, f, boxes, idx, output_size, scale, ratio, aligned)
            err, ok = max_violation(got, want, rtol, atol)
            yield f"forward  {name}", err, ok

            grads = random_values(rng, want.shape, suffix)
            want_grad = numpy_roi_align_backward(
                grads, boxes, idx, f.shape, output_size, scale, ratio, aligned
            )
            got_grad = backward(
                suffix, grads, boxes, idx, f.shape, output_size, scale, ratio, aligned
            )
            # The accumulation is float32 except for f64: sums of many terms get 1e-5 relative.
            grad_rtol, grad_atol = (0.0, 1e-10) if suffix == "f64" else (1e-5, 1e-5)
            err, ok = max_violation(got_grad, want_grad, grad_rtol, grad_atol)
            yield f"backward {name}", err, ok


def cupy_checks(
    cupy, module, seed: int = 0, suffixes: tuple[str, ...] = ("f32", "f64", "f16", "bf16")
):
    """kernel_checks on the GPU through CuPy, plus the 16-bit cast kernels."""

    def forward(suffix, *args):
        return cupy_forward(cupy, module, suffix, *args)

    def backward(suffix, *args):
        return cupy_backward(cupy, module, suffix, *args)

    yield from kernel_checks(forward, backward, seed, suffixes)
    rng = np.random.default_rng(seed + 1)
    case = make_case(rng, special=False)
    f, boxes, idx = case["features"], case["boxes"], case["box_indices"]
    grads = rng.integers(-64, 65, size=(len(boxes), 3, 3, f.shape[-1])) / 64.0
    want = numpy_roi_align_backward(grads, boxes, idx, f.shape, (3, 3), 0.25, 0, True)
    for suffix in [s for s in suffixes if s in ("f16", "bf16")]:
        got = cupy_backward(
            cupy, module, suffix, grads, boxes, idx, f.shape, (3, 3), 0.25, 0, True, cast=True
        )
        rtol = output_tolerance(suffix)[0]
        err, ok = max_violation(got, want, rtol, 1e-5)
        yield f"backward+cast {suffix}", err, ok


# ---------------------------------------------------------------------------------------------
# torchvision (optional second reference).


def torchvision_or_reason():
    try:
        import torch
        import torchvision  # noqa: F401
        from torchvision.ops import roi_align  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:  # absent, or torch/torchvision skew
        return None, f"torch/torchvision not importable ({type(exc).__name__}: {exc})"
    return torch, None


def torchvision_roi_align(
    torch,
    features,
    boxes,
    box_indices,
    output_size,
    spatial_scale,
    sampling_ratio,
    aligned,
    grads=None,
):
    """torchvision.ops.roi_align in float64 on kmask conventions.

    features NHWC [B,H,W,C] -> NCHW; boxes (y1,x1,y2,x2) -> rows (batch, x1, y1, x2, y2).
    Returns (output [K,oh,ow,C], grad wrt features [B,H,W,C] of sum(output * grads) or None).
    """
    from torchvision.ops import roi_align

    x = torch.tensor(
        np.transpose(features, (0, 3, 1, 2)), dtype=torch.float64, requires_grad=grads is not None
    )
    b = np.asarray(boxes, np.float64)
    rois = np.stack([box_indices.astype(np.float64), b[:, 1], b[:, 0], b[:, 3], b[:, 2]], 1)
    out = roi_align(
        x,
        torch.tensor(rois),
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    grad = None
    if grads is not None:
        g = torch.tensor(np.transpose(grads, (0, 3, 1, 2)), dtype=torch.float64)
        (out * g).sum().backward()
        grad = np.transpose(x.grad.numpy(), (0, 2, 3, 1))
    return np.transpose(out.detach().numpy(), (0, 2, 3, 1)), grad


def torchvision_checks(torch, cupy, module, seed: int = 0):
    """Kernel (f32 and f64 through CuPy) and NumPy reference against torchvision.

    torchvision has no NaN-box or bad-index handling of its own, so those boxes are left out.
    """
    rng = np.random.default_rng(seed + 2)
    for aligned, ratio, scale, output_size in SETTINGS:
        case = make_case(rng, spatial_scale=scale, special=False)
        f, boxes, idx = case["features"], case["boxes"], case["box_indices"]
        # Keep one zero-area box: that case is covered by torchvision's semantics too.
        zero = np.asarray([[8.0, 12.0, 8.0, 12.0]], np.float32) / np.float32(scale)
        boxes = np.concatenate([boxes, zero.astype(np.float32)])
        idx = np.concatenate([idx, np.asarray([1], np.int32)])
        grads = rng.integers(-64, 65, size=(len(boxes), *output_size, f.shape[-1])) / 64.0
        tv_out, tv_grad = torchvision_roi_align(
            torch, f, boxes, idx, output_size, scale, ratio, aligned, grads
        )
        name = f"aligned={aligned} ratio={ratio} scale={scale} out={output_size}"
        ref = expected_forward(f, boxes, idx, output_size, scale, ratio, aligned)
        yield (
            f"torchvision vs numpy reference forward {name}",
            *max_violation(ref, tv_out, 1e-5, 1e-5),
        )
        ref_grad = numpy_roi_align_backward(
            grads, boxes, idx, f.shape, output_size, scale, ratio, aligned
        )
        yield (
            f"torchvision vs numpy backward {name}",
            *max_violation(ref_grad, tv_grad, 1e-5, 1e-5),
        )
        if cupy is None:
            continue
        for suffix in ("f32", "f64"):
            out = cupy_forward(
                cupy, module, suffix, f, boxes, idx, output_size, scale, ratio, aligned
            )
            yield (
                f"torchvision vs kernel {suffix} forward {name}",
                *max_violation(out, tv_out, 1e-5, 1e-5),
            )
            grad = cupy_backward(
                cupy, module, suffix, grads, boxes, idx, f.shape, output_size, scale, ratio, aligned
            )
            yield (
                f"torchvision vs kernel {suffix} backward {name}",
                *max_violation(grad, tv_grad, 1e-5, 1e-5),
            )


def main() -> int:
    cupy, reason = cupy_or_reason()
    if cupy is None:
        print(f"SKIP: {reason}")
        print("FAIL (no GPU check ran)")
        return 2
    module = load_cupy_module(cupy)
    results = list(cupy_checks(cupy, module))
    torch, tv_reason = torchvision_or_reason()
    if torch is None:
        print(f"note: torchvision comparison skipped: {tv_reason}")
    else:
        results += list(torchvision_checks(torch, cupy, module))
    width = max(len(name) for name, _, _ in results)
    for name, err, ok in results:
        print(f"{name:<{width}}  max_abs_err={err:.3e}  {'ok' if ok else 'FAILED'}")
    failed = [name for name, _, ok in results if not ok]
    device = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    device = device.decode() if isinstance(device, bytes) else device
    if failed:
        print(f"FAIL: {len(failed)} of {len(results)} checks failed on {device}")
        return 1
    print(f"PASS: {len(results)} checks on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
