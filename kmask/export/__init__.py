"""Deployment exports: TensorFlow Serving SavedModels, ONNX and TFLite models.

- ``SavedModelExporter`` / ``export_saved_model``: ``EXPORT_DIR/<version>/`` with a
  ``serving_default`` signature over raw images (``image_bytes``, ``image_tensor`` or
  ``tf_example``), preprocessing and postprocessing in the graph, stock TensorFlow ops only.
- ``OnnxExporter`` / ``export_onnx``: one ``.onnx`` file over ``image_tensor`` batches,
  RoIAlign as ONNX ``RoiAlign`` and NMS as ``NonMaxSuppression`` (extra ``[onnx]``).
- ``TfliteExporter`` / ``export_tflite``: one ``.tflite`` file for the LiteRT interpreter,
  one fixed-size ``image_tensor`` image, LiteRT builtin ops only (float32, float16 or
  int8-dynamic weights).
- ``InferenceGraph``: that preprocessing -> model -> postprocessing graph on its own.
"""

from kmask.export.inference_graph import INPUT_TYPES, InferenceGraph
from kmask.export.onnx_exporter import OnnxExporter, export_onnx
from kmask.export.saved_model_exporter import SavedModelExporter, export_saved_model
from kmask.export.tflite_exporter import TfliteExporter, export_tflite

__all__ = [
    "INPUT_TYPES",
    "InferenceGraph",
    "OnnxExporter",
    "SavedModelExporter",
    "TfliteExporter",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
]
