"""ONNX export through ``tf2onnx.convert.from_function`` (tf2onnx >= 1.17, extra ``[onnx]``).

Two TensorFlow ops get conversion handlers of kmask's own:

- ``Kmask>RoiAlign`` (the custom op; the model is traced with it) becomes ONNX ``RoiAlign``
  (opset 16, ``mode="avg"``, ``coordinate_transformation_mode`` always written:
  ``half_pixel`` for ``aligned``, ``output_half_pixel`` otherwise) between NHWC<->NCHW
  transposes, with boxes reordered to ``(x1, y1, x2, y2)``;
- ``CombinedNonMaxSuppression`` with class-specific boxes (``[B, N, C, 4]``, the box head's),
  which tf2onnx 1.17 refuses ("only currently implemented for boxes shared across
  classes"), is rewritten to the shared-box form it converts (ONNX ``NonMaxSuppression``):
  box ``n`` of class ``c`` becomes box ``n * C + c`` shared by all classes, scored
  ``-1`` (below any threshold) for every class but ``c``. Same detections, C times the
  boxes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data.category_map import CategoryMap
from kmask.data.image_io import write_atomic
from kmask.errors import BuildError
from kmask.export.inference_graph import InferenceGraph, with_roi_align
from kmask.export.output_paths import check_output_file
from kmask.native import custom_ops

OPSET = 17
INPUT_NAME = "image_tensor"


def _roi_align_handler(ctx: Any, node: Any, name: str, args: Any) -> None:
    """``Kmask>RoiAlign(features [B,H,W,C], boxes [K,4] yxyx, box_indices [K])`` ->
    ONNX ``RoiAlign`` on NCHW; output ``[K, out_h, out_w, C]`` as the TF op's."""
    from onnx import TensorProto

    aligned = bool(node.get_attr_value("aligned"))
    attributes = {
        "mode": "avg",
        "output_height": node.get_attr_value("pooled_height"),
        "output_width": node.get_attr_value("pooled_width"),
        "sampling_ratio": node.get_attr_value("sampling_ratio"),
        "spatial_scale": node.get_attr_value("spatial_scale"),
        "coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel",
    }
    ctx.insert_new_node_on_input(node, "Transpose", node.input[0], perm=[0, 3, 1, 2])
    order = ctx.make_const(f"{node.name}_xyxy", np.array([1, 0, 3, 2], np.int64)).output[0]
    rois = ctx.make_node("Gather", [node.input[1], order], attr={"axis": 1}).output[0]
    ctx.replace_input(node, node.input[1], rois, 1)
    ctx.insert_new_node_on_input(node, "Cast", node.input[2], to=TensorProto.INT64)
    node.type = "RoiAlign"
    node.domain = ""
    for key in list(node.attr):
        del node.attr[key]
    for key, value in attributes.items():
        node.set_attr(key, value)
    shape = ctx.get_shape(node.output[0])
    if shape is not None:
        ctx.set_shape(node.output[0], [shape[0], shape[3], shape[1], shape[2]])
    ctx.insert_new_node_on_output("Transpose", node.output[0], perm=[0, 2, 3, 1])


def _combined_nms_handler(ctx: Any, node: Any, name: str, args: Any) -> None:
    """Class-specific ``CombinedNonMaxSuppression`` -> the shared-box form (module
    docstring), then tf2onnx's own conversion."""
    from tf2onnx.graph_builder import GraphBuilder
    from tf2onnx.onnx_opset.tensor import CombinedNonMaxSuppression

    boxes, scores = node.input[0], node.input[1]
    shape = ctx.get_shape(boxes)
    if shape is None or shape[2] != 1:
        num_classes = ctx.get_shape(scores)[2]
        if num_classes is None or num_classes < 0:
            raise ValueError("CombinedNonMaxSuppression: the number of classes must be static")
        shared_shape = ctx.make_const(
            f"{node.name}_shared_shape", np.array([0, -1, 1, 4], np.int64)
        ).output[0]
        shared = ctx.make_node("Reshape", [boxes, shared_shape]).output[0]
        ctx.set_shape(shared, [-1, -1, 1, 4])
        eye = np.eye(num_classes, dtype=np.float32)
        # scores [B, N, C] -> [B, N, C, 1] * eye [C, C] + (eye - 1) -> [B, N*C, C]
        unsqueezed = GraphBuilder(ctx).make_unsqueeze({"data": scores, "axes": [3]})
        keep = ctx.make_const(f"{node.name}_eye", eye).output[0]
        off = ctx.make_const(f"{node.name}_off", eye - 1.0).output[0]
        masked = ctx.make_node("Mul", [unsqueezed, keep]).output[0]
        masked = ctx.make_node("Add", [masked, off]).output[0]
        flat_shape = ctx.make_const(
            f"{node.name}_flat_shape", np.array([0, -1, num_classes], np.int64)
        ).output[0]
        flat = ctx.make_node("Reshape", [masked, flat_shape]).output[0]
        ctx.set_shape(flat, [-1, -1, num_classes])
        ctx.replace_input(node, boxes, shared, 0)
        ctx.replace_input(node, scores, flat, 1)
    CombinedNonMaxSuppression.version_12(ctx, node)


class OnnxExporter:
    """Writes a model as an ONNX file for ONNX Runtime.

    The graph is ``InferenceGraph`` with the ``image_tensor`` input: ``image_tensor`` uint8
    ``[B, H, W, 3]`` RGB (dynamic batch and size; one size per batch). Outputs are the
    ``InferenceGraph`` outputs (``detection_boxes [B, N, 4]`` float32 ``(y1, x1, y2, x2)``
    in source-image pixels, ``detection_scores``, ``detection_classes`` int32 category ids,
    ``num_detections``, ``detection_masks`` for Mask R-CNN, ``original_size``). An empty
    batch (``B = 0``) gives empty outputs (``[0, ...]``): the graph runs the model on one
    blank image and keeps none of its outputs, as ONNX has no op to refuse it with a
    message. ONNX has no assertions either, so the SavedModel's request limits are not in
    the graph: whoever calls ONNX Runtime bounds its inputs.

    RoIAlign becomes ONNX ``RoiAlign`` and NMS ``NonMaxSuppression`` (module docstring);
    that needs the RoIAlign custom op (``kmask build-ops``) to trace the model.

    Args:
      model: a built ``MaskRCNN``; it is copied, not changed.
      data_config: the resizing the model was trained with (``config.data``).
      categories: the training categories (``None``: ids ``1..num_classes``).
      opset: ONNX opset (>= 16 for ``RoiAlign``'s coordinate mode).
    """

    def __init__(
        self,
        model: keras.Model,
        data_config: DataConfig,
        categories: CategoryMap | None = None,
        opset: int = OPSET,
    ) -> None:
        if opset < 16:
            raise ValueError(f"opset must be >= 16 (RoiAlign coordinate modes), got {opset}")
        require_custom_op()
        self.opset = opset
        self.graph = InferenceGraph(with_roi_align(model, "custom"), data_config, categories)

    def convert(self) -> Any:
        """The ``onnx.ModelProto``."""
        import tf2onnx

        graph = self.graph
        spec = graph.input_signature(INPUT_NAME)

        @tf.function(input_signature=[spec], autograph=False)
        def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
            # The model's reshapes cannot infer a dimension of an empty batch: run it on
            # at least one image (a blank one added when B = 0) and keep B outputs.
            batch = tf.shape(images)[0]
            padded = tf.pad(images, [[0, tf.maximum(1 - batch, 0)], [0, 0], [0, 0], [0, 0]])
            return {name: value[:batch] for name, value in graph(padded, INPUT_NAME).items()}

        model_proto, _ = tf2onnx.convert.from_function(
            serve,
            input_signature=[spec],
            opset=self.opset,
            custom_op_handlers={
                "Kmask>RoiAlign": (_roi_align_handler, []),
                "CombinedNonMaxSuppression": (_combined_nms_handler, []),
            },
        )
        return model_proto

    def export(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Converts and writes ``path`` (``image_io.write_atomic``: temporary file, then
        rename); the path is checked first (``check_output_file``), before the conversion."""
        path = check_output_file(path, overwrite, ".onnx")
        data = self.convert().SerializeToString()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        return path


def require_custom_op() -> None:
    """Returns when the RoIAlign custom op loads (building it if needed); the ONNX export
    traces the model with it and turns it into ONNX ``RoiAlign``.

    Raises:
      BuildError: one line naming why the op is unavailable; ``fix`` says what to do.
    """
    if custom_ops.load() is None:
        status = custom_ops.status(build=False)
        raise BuildError(
            "the ONNX export needs the RoIAlign custom op (it becomes ONNX RoiAlign), "
            f"and it is unavailable: {status.reason}",
            fix=status.fix or "run `kmask build-ops`",
        )


def export_onnx(
    model: keras.Model,
    path: str | os.PathLike[str],
    data_config: DataConfig,
    categories: CategoryMap | None = None,
    overwrite: bool = False,
    opset: int = OPSET,
) -> Path:
    """``OnnxExporter(model, data_config, categories, opset).export(path, overwrite)``."""
    return OnnxExporter(model, data_config, categories, opset).export(path, overwrite)
