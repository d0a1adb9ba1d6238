"""TFLite export for the LiteRT interpreter (``ai-edge-litert``), LiteRT builtin ops only.

``tf.lite.TFLiteConverter`` converts ``InferenceGraph`` over one fixed-size ``image_tensor``
with ``supported_ops = [TFLITE_BUILTINS]``: no Flex (TensorFlow) op and no custom op, so
the file runs in the LiteRT interpreter with no TensorFlow installed; an op without a
builtin fails the conversion, and the converter's message names it. Two parts of the model
are traced in a builtin form for this export only, with the model's numbers:

- RoIAlign: the pure-TensorFlow implementation (``roi_align_tf``: gathers and arithmetic),
  not the custom op;
- NMS: TensorFlow's ``CombinedNonMaxSuppression`` has no builtin; ``batched_multiclass_nms``
  is traced as one single-class ``NonMaxSuppressionV5`` per class (``NON_MAX_SUPPRESSION_V5``)
  and a ``top_k`` (``kmask.ops.nms.nms_implementation``), which needs the static batch of 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data.category_map import CategoryMap
from kmask.data.image_io import write_atomic
from kmask.export.inference_graph import InferenceGraph, with_roi_align
from kmask.export.output_paths import check_output_file
from kmask.ops.nms import nms_implementation

PRECISIONS = ("float32", "float16", "int8-dynamic")
INPUT_NAME = "image_tensor"
SIGNATURE_KEY = "serving_default"
# Resource-variable ops: weights left as uninitialized variables instead of constants.
VARIABLE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE")


def default_input_size(data_config: DataConfig) -> tuple[int, int]:
    """The input ``(height, width)`` of a TFLite export when none is given: the fixed canvas
    ``data.image_size`` if the config has one, else a square of the evaluation shorter side
    ``max(data.min_size)`` (capped by ``data.max_size``)."""
    if data_config.image_size is not None:
        height, width = data_config.image_size
        return int(height), int(width)
    side = min(max(data_config.min_size), data_config.max_size)
    return side, side


class TfliteExporter:
    """Writes a model as one ``.tflite`` file for the LiteRT interpreter.

    The graph is ``InferenceGraph`` with its ``image_tensor`` input at one fixed size:
    signature ``serving_default``, input ``image_tensor`` uint8 ``[1, H, W, 3]`` RGB (0..255;
    the evaluation resizing, padding and the model's normalization are in the graph). The
    outputs are ``InferenceGraph``'s, for that one image: ``detection_boxes [1, N, 4]``
    float32 ``(y1, x1, y2, x2)`` in input pixels, ``detection_scores [1, N]``,
    ``detection_classes [1, N]`` int32 category ids (``-1`` past the count),
    ``num_detections [1]`` int32, ``detection_masks [1, N, M, M]`` float32 probabilities in
    the box frame for Mask R-CNN, ``original_size [1, 2]``. Images of another size are
    resized (or letterboxed) to ``H x W`` by the caller.

    Precisions (the weights; activations and boxes stay float32 at run time):
    ``float32``; ``float16`` (weights stored as float16, dequantized when the interpreter
    loads them: half the file); ``int8-dynamic`` (dynamic-range quantization: int8 weights,
    activations quantized on the fly by the hybrid convolution and fully connected kernels:
    a third of the file for shapes_tiny).

    Args:
      model: a built ``MaskRCNN`` in float32; it is copied, not changed.
      data_config: the resizing the model was trained with (``config.data``).
      categories: the training categories (``None``: ids ``1..num_classes``).
      input_size: the input ``(height, width)``; ``None``: ``default_input_size``.
      precision: one of ``PRECISIONS``.
    """

    def __init__(
        self,
        model: keras.Model,
        data_config: DataConfig,
        categories: CategoryMap | None = None,
        input_size: tuple[int, int] | None = None,
        precision: str = "float32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if input_size is None:
            input_size = default_input_size(data_config)
        if len(input_size) != 2 or any(
            isinstance(side, bool) or not isinstance(side, int) or side <= 0 for side in input_size
        ):
            raise ValueError(
                f"input_size must be (height, width), positive integers, got {input_size!r}"
            )
        self.input_size = tuple(input_size)
        self.precision = precision
        self.graph = InferenceGraph(with_roi_align(model, "tf"), data_config, categories)

    def convert(self) -> bytes:
        """The ``.tflite`` flatbuffer.

        Raises:
          ValueError: the graph needs an op that LiteRT has no builtin for (the converter's
            message, which names it, follows).
        """
        graph = self.graph
        spec = tf.TensorSpec([1, *self.input_size, 3], tf.uint8, name=INPUT_NAME)

        @tf.function(input_signature=[spec], autograph=False)
        def serve(image_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
            return graph(image_tensor, INPUT_NAME)

        # The converter saves ``module`` as a SavedModel first, which gives the file its
        # signature (a failure there is silent: no signature) and traces ``serve`` again:
        # the whole conversion runs inside the NMS context. The module tracks the
        # tf.Variables the function captures (under Keras 3's variables), which the
        # converter then freezes into constants.
        with nms_implementation("single_class"):
            concrete = serve.get_concrete_function()
            module = tf.Module()
            module.serve = serve
            module.captured_variables = list(concrete.variables)
            converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if self.precision != "float32":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if self.precision == "float16":
                converter.target_spec.supported_types = [tf.float16]
            try:
                data = converter.convert()
            except Exception as error:  # ConverterError; its module moves between releases
                raise ValueError(
                    f"TFLite conversion with LiteRT builtin ops only failed: {error}"
                ) from error
        unwanted = [op for op in model_ops(data) if op.startswith("CUSTOM:") or op in VARIABLE_OPS]
        if unwanted:
            raise ValueError(
                f"the converted model uses {unwanted}: not builtins with constant weights"
            )
        if signature_keys(data) != [SIGNATURE_KEY]:
            raise ValueError(
                f"the converted model has signatures {signature_keys(data)}, not "
                f"[{SIGNATURE_KEY!r}] (the converter could not save the function first)"
            )
        return data

    def export(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Converts and writes ``path`` (``image_io.write_atomic``: temporary file, then
        rename); the path is checked first (``check_output_file``), before the conversion."""
        path = check_output_file(path, overwrite, ".tflite")
        data = self.convert()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        return path


def model_ops(data: bytes) -> list[str]:
    """The sorted names of the operators a ``.tflite`` flatbuffer uses (all subgraphs), read
    from its operator-code table: builtin names (``CONV_2D``, ``NON_MAX_SUPPRESSION_V5``)
    and ``CUSTOM:<code>`` for a custom or Flex op (a Flex op's code starts ``Flex``)."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if name.isupper()}
    model = schema.Model.GetRootAs(data, 0)
    ops = set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        # Codes above 127 are only in the newer int32 field; older files use the int8 one.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            ops.add(names[builtin])
    return sorted(ops)


def signature_keys(data: bytes) -> list[str]:
    """The signature keys of a ``.tflite`` flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    return [
        model.SignatureDefs(i).SignatureKey().decode() for i in range(model.SignatureDefsLength())
    ]


def export_tflite(
    model: keras.Model,
    path: str | os.PathLike[str],
    data_config: DataConfig,
    categories: CategoryMap | None = None,
    input_size: tuple[int, int] | None = None,
    precision: str = "float32",
    overwrite: bool = False,
) -> Path:
    """``TfliteExporter(model, data_config, categories, input_size, precision).export(path,
    overwrite)``."""
    exporter = TfliteExporter(model, data_config, categories, input_size, precision)
    return exporter.export(path, overwrite)
