"""RoIAlign parity with ONNX Runtime's ``RoiAlign`` (opset 16, avg mode).

kmask conventions: features NHWC ``[B, H, W, C]``, boxes ``[K, 4]`` float32 ``(y1, x1, y2, x2)``
in input pixels, box_indices ``[K]`` int32, output ``[K, out_h, out_w, C]``.
ONNX conventions: ``X`` NCHW ``[B, C, H, W]``, ``rois`` ``[K, 4]`` ``(x1, y1, x2, y2)``,
``batch_indices`` ``[K]`` int64, ``Y`` ``[K, C, out_h, out_w]``.

``aligned=True`` is ``coordinate_transformation_mode="half_pixel"`` and ``aligned=False`` is
``"output_half_pixel"``; the attribute is always written (ONNX Runtime's default differs
between versions). Every setting is compared three ways: ONNX Runtime against the scalar NumPy
reference (tests/ops/roi_align_reference.py), and ``kmask.ops.roi_align`` with
``implementation="tf"`` and ``"custom"`` against ONNX Runtime, all to 1e-5 in float32.
"""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest

from tests.ops.roi_align_reference import roi_align_reference

onnx = pytest.importorskip("onnx", reason="onnx is not installed (extra [onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (extra [onnx])")
from onnx import TensorProto, helper  # noqa: E402 (after the importorskip)

ATOL = 1e-5
OUTPUT_SIZE = (5, 4)
SETTINGS = list(itertools.product([True, False], [0, 2], [0.25, 1.0]))
SETTING_IDS = [f"aligned={a}-ratio={r}-scale={s}" for a, r, s in SETTINGS]


def make_inputs(spatial_scale: float, seed: int = 0):
    """features float32 [3, 12, 15, 4]; boxes float32 [K, 4] (y1, x1, y2, x2) in input pixels
    (feature coordinates / spatial_scale), several partly outside the map, one of zero area,
    one thinner than a pixel; box_indices int32 [K] over all three images."""
    rng = np.random.default_rng(seed)
    batch, height, width, channels = 3, 12, 15, 4
    features = rng.uniform(-1.0, 1.0, size=(batch, height, width, channels)).astype(np.float32)
    feature_boxes = [
        [1.3, 2.1, 7.9, 9.4],  # inside
        [-3.2, -2.5, 4.1, 6.7],  # over the top-left corner
        [8.5, 11.0, 14.9, 19.3],  # over the bottom-right corner
        [-0.4, 3.0, 2.0, 16.5],  # over the top and right edges
        [5.0, 6.0, 5.0, 6.0],  # zero area
        [2.0, 1.0, 2.3, 13.0],  # thinner than a pixel
        [0.0, 0.0, 12.0, 15.0],  # the whole map
    ]
    for _ in range(6):
        y1, x1 = rng.uniform(-0.3, 0.9) * height, rng.uniform(-0.3, 0.9) * width
        h, w = rng.uniform(0.05, 0.8) * height, rng.uniform(0.05, 0.8) * width
        feature_boxes.append([y1, x1, y1 + h, x1 + w])
    boxes = (np.asarray(feature_boxes) / spatial_scale).astype(np.float32)
    box_indices = (np.arange(len(boxes)) % batch).astype(np.int32)
    rng.shuffle(box_indices)
    return features, boxes, box_indices


def onnx_roi_align(
    features, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned
) -> np.ndarray:
    """ONNX Runtime RoiAlign on kmask conventions; returns float32 [K, out_h, out_w, C]."""
    batch, height, width, channels = features.shape
    num_boxes = len(boxes)
    node = helper.make_node(
        "RoiAlign",
        ["X", "rois", "batch_indices"],
        ["Y"],
        mode="avg",
        output_height=output_size[0],
        output_width=output_size[1],
        sampling_ratio=sampling_ratio,
        spatial_scale=float(spatial_scale),
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "kmask_roi_align_parity",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, channels, height, width]),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, [num_boxes, 4]),
            helper.make_tensor_value_info("batch_indices", TensorProto.INT64, [num_boxes]),
        ],
        [
            helper.make_tensor_value_info(
                "Y", TensorProto.FLOAT, [num_boxes, channels, *output_size]
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8  # the IR version of opset 16; any ONNX Runtime >= 1.11 reads it
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rois = np.ascontiguousarray(boxes[:, [1, 0, 3, 2]], np.float32)  # -> (x1, y1, x2, y2)
    (y,) = session.run(
        None,
        {
            "X": np.ascontiguousarray(features.transpose(0, 3, 1, 2)),
            "rois": rois,
            "batch_indices": box_indices.astype(np.int64),
        },
    )
    return y.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale", SETTINGS, ids=SETTING_IDS)
def test_onnxruntime_matches_numpy_reference(aligned, sampling_ratio, spatial_scale):
    features, boxes, box_indices = make_inputs(spatial_scale)
    got = onnx_roi_align(
        features, boxes, box_indices, OUTPUT_SIZE, spatial_scale, sampling_ratio, aligned
    )
    want = roi_align_reference(
        features,
        boxes,
        box_indices,
        OUTPUT_SIZE,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    assert got.shape == (len(boxes), *OUTPUT_SIZE, features.shape[-1])
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_onnx_modes_differ():
    """The two coordinate modes give different numbers here, so the tests above tell them
    apart (a mode attribute that were ignored would fail one of them)."""
    features, boxes, box_indices = make_inputs(1.0)
    half = onnx_roi_align(features, boxes, box_indices, OUTPUT_SIZE, 1.0, 2, True)
    output_half = onnx_roi_align(features, boxes, box_indices, OUTPUT_SIZE, 1.0, 2, False)
    assert np.abs(half - output_half).max() > 0.05


def _kmask_roi_align(implementation: str):
    """kmask.ops.roi_align bound to one implementation, or a skip saying why it cannot run."""
    try:
        # The module, not the function that kmask.ops re-exports under the same name.
        roi_align_module = importlib.import_module("kmask.ops.roi_align")
    except ImportError as error:
        pytest.skip(f"kmask.ops.roi_align is not importable: {error}")
    if implementation == "custom":
        try:
            roi_align_module.resolve_implementation("custom")
        except RuntimeError as error:
            pytest.skip(f"the custom op is not available here: {error}")
    return roi_align_module.roi_align


@pytest.mark.parametrize("implementation", ["tf", "custom"])
@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale", SETTINGS, ids=SETTING_IDS)
def test_kmask_roi_align_matches_onnxruntime(
    implementation, aligned, sampling_ratio, spatial_scale
):
    roi_align = _kmask_roi_align(implementation)
    features, boxes, box_indices = make_inputs(spatial_scale, seed=1)
    want = onnx_roi_align(
        features, boxes, box_indices, OUTPUT_SIZE, spatial_scale, sampling_ratio, aligned
    )
    got = roi_align(
        features,
        boxes,
        box_indices,
        OUTPUT_SIZE,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        implementation=implementation,
    )
    got = np.asarray(got)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
