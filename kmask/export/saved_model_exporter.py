"""SavedModel export for TensorFlow Serving: preprocessing, model and postprocessing in one
graph of stock TensorFlow ops."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kmask.config import DataConfig
from kmask.data.category_map import CategoryMap
from kmask.export.inference_graph import IMAGE_FEATURE_KEY, InferenceGraph, with_roi_align
from kmask.export.output_paths import check_creatable

LABEL_MAP_NAME = "categories.json"
WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
# Ops that run Python: a server has no interpreter to call back into.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
# Request limits of a served model (README "Deploy"). 16 images: a request's memory and
# time grow with its batch (R50-FPN at 800x1333 on CPU: about 170 MB and 20 s per image on
# 2 cores), so 16 bounds one request to a few GB. 25 megapixels: a 6000x4000 (24 MP) photo
# passes, while the model resizes every image to at most max_size (1333) anyway; decoding
# costs 3 bytes per pixel (75 MB at the limit).
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000


def graph_op_types(saved_model_dir: str | os.PathLike[str]) -> set[str]:
    """Every op type in a SavedModel's graphs, function library included."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    types = set()
    for meta_graph in saved_model.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    return types


def non_stock_ops(saved_model_dir: str | os.PathLike[str]) -> list[str]:
    """The op types of a SavedModel that a stock TensorFlow (Serving) cannot run: Python
    callbacks, namespaced custom ops (``Kmask>RoiAlign``) and ops this process's TensorFlow
    does not register. Empty for a servable model."""
    from tensorflow.python.framework import op_def_registry

    return sorted(
        op
        for op in graph_op_types(saved_model_dir)
        if op in PYTHON_OPS or ">" in op or op_def_registry.get(op) is None
    )


def next_version(export_dir: str | os.PathLike[str]) -> int:
    """1 + the largest numeric version directory under ``export_dir`` (1 when none)."""
    path = Path(export_dir)
    versions = [int(p.name) for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []
    return max(versions, default=0) + 1


def version_directory(
    export_dir: str | os.PathLike[str], version: int | None = None, overwrite: bool = False
) -> Path:
    """``EXPORT_DIR/<version>`` that an export would write, checked before any work.

    Args:
      export_dir: the model base path (may not exist yet).
      version: positive version number; default one more than the largest present.
      overwrite: whether an existing ``<version>`` may be replaced.

    Raises:
      ValueError: ``export_dir`` is not a directory, or a bad ``version``.
      FileExistsError: ``<version>`` exists and ``overwrite`` is False.
      OSError: it cannot be created (``output_paths.check_creatable``).
    """
    base = Path(export_dir)
    if base.exists() and not base.is_dir():
        raise ValueError(f"export directory {base} exists and is not a directory")
    if version is None:
        version = next_version(base)
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    target = base / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite)")
    return check_creatable(target)


class SavedModelExporter:
    """Writes a model as a TensorFlow Serving SavedModel.

    Layout (what ``tensorflow_model_server --model_base_path=EXPORT_DIR`` serves)::

        EXPORT_DIR/<version>/saved_model.pb, variables/
        EXPORT_DIR/<version>/assets/categories.json         the label map (COCO categories)
        EXPORT_DIR/<version>/assets.extra/tf_serving_warmup_requests   PredictionLog TFRecord

    The signature ``serving_default`` takes one input named after ``input_type``
    (``InferenceGraph.input_signature``) and returns the ``InferenceGraph`` outputs:
    ``detection_boxes [B, N, 4]`` float32 ``(y1, x1, y2, x2)`` in source-image pixels,
    ``detection_scores [B, N]``, ``detection_classes [B, N]`` int32 category ids (``-1``
    past ``num_detections``), ``num_detections [B]``, ``detection_masks [B, N, M, M]``
    box-frame probabilities (Mask R-CNN), ``detection_full_masks [B, N, H, W]`` uint8 (with
    ``full_masks``), ``original_size [B, 2]``, ``decode_ok [B]`` bool (encoded inputs: False
    for an image that did not decode, which gets zero detections while the rest of the
    batch is answered); an RPN-only model returns ``proposals``, ``proposal_scores`` and
    ``num_proposals`` instead of the detections.

    Requests are refused (InvalidArgument naming the limit and the value) before any image
    is decoded when they are empty, hold more than ``max_batch_size`` images, or an image of
    more than ``max_image_pixels`` (read from the header of encoded images).

    The model is traced with the pure-TensorFlow RoIAlign (``roi_align_implementation``), so
    the graph holds only stock ops; ``export`` checks that (``non_stock_ops``).

    Example::

        exporter = SavedModelExporter(model, config.data, run.load_categories())
        exporter.export("exports/shapes", input_type="image_bytes")  # exports/shapes/1

    Args:
      model: a built ``MaskRCNN``; it is copied, not changed.
      data_config: the resizing the model was trained with (``config.data``).
      categories: the training categories (ids for ``detection_classes``, the label map);
        ``None`` gives ids ``1..num_classes``.
      mask_threshold: binarization of ``detection_full_masks`` (``config.eval``).
      mask_paste: how they are pasted (``config.eval``; "torchvision" for converted
        torchvision models).
      roi_align_implementation: ``"tf"`` (stock ops, default) or ``"custom"`` for a server
        built with the kmask op (the stock-op check is skipped then).
      max_batch_size: most images per request (``DEFAULT_MAX_BATCH_SIZE``, 16; ``None``:
        no limit).
      max_image_pixels: most pixels (height x width) per image
        (``DEFAULT_MAX_IMAGE_PIXELS``, 25 million; ``None``: no limit).
    """

    def __init__(
        self,
        model: keras.Model,
        data_config: DataConfig,
        categories: CategoryMap | None = None,
        mask_threshold: float = 0.5,
        roi_align_implementation: str = "tf",
        mask_paste: str = "exact",
        max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if roi_align_implementation not in ("tf", "custom"):
            raise ValueError(
                "roi_align_implementation must be 'tf' or 'custom', got "
                f"{roi_align_implementation!r}"
            )
        self.roi_align_implementation = roi_align_implementation
        self.graph = InferenceGraph(
            with_roi_align(model, roi_align_implementation),
            data_config,
            categories,
            mask_threshold,
            mask_paste,
            max_batch_size,
            max_image_pixels,
        )

    def serving_module(self, input_type: str, full_masks: bool = False) -> tf.Module:
        """A ``tf.Module`` holding the model's variables and ``serve``, the ``tf.function``
        of the signature (class docstring)."""
        graph = self.graph
        spec = graph.input_signature(input_type)

        def serve(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            check = tf.debugging.assert_positive(
                tf.shape(inputs)[0], message=f"{input_type}: empty batch, send at least 1 image"
            )
            with tf.control_dependencies([check]):
                inputs = tf.identity(inputs)
            return graph(inputs, input_type, full_masks)

        module = tf.Module()
        # The variables, not the Keras model: saving the model would trace Keras's own
        # default signature (features dict in, which the serving graph replaces).
        module.model_variables = list(graph.model.variables)
        module.serve = tf.function(serve, input_signature=[spec], autograph=False)
        return module

    def export(
        self,
        export_dir: str | os.PathLike[str],
        input_type: str = "image_bytes",
        version: int | None = None,
        full_masks: bool = False,
        overwrite: bool = False,
    ) -> Path:
        """Writes ``EXPORT_DIR/<version>`` atomically; returns that directory.

        The SavedModel is written under a hidden temporary name in ``export_dir`` (which
        TensorFlow Serving ignores) and renamed to ``<version>`` only when complete, so an
        interrupted export leaves no directory that looks servable.

        Args:
          export_dir: the model base path (created when missing).
          input_type: ``"image_bytes"``, ``"image_tensor"`` or ``"tf_example"``.
          version: positive version number; default one more than the largest present.
          full_masks: also return ``detection_full_masks`` (pasted, uint8).
          overwrite: replace an existing ``<version>`` directory.

        Raises:
          ValueError: bad ``input_type`` or ``version``, or non-stock ops in the graph.
          FileExistsError: ``<version>`` exists and ``overwrite`` is False.
          OSError: ``export_dir`` cannot be created or written.
        """
        self.graph.input_signature(input_type)  # validates the name
        target = version_directory(export_dir, version, overwrite)
        base = target.parent
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-incomplete-", dir=base))
        try:
            self._write(staging / "model", input_type, full_masks)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}-replaced-", dir=base))
                target.rename(old / "model")
                (staging / "model").rename(target)
                shutil.rmtree(old)
            else:
                (staging / "model").rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _write(self, path: Path, input_type: str, full_masks: bool) -> None:
        module = self.serving_module(input_type, full_masks)
        label_dir = Path(tempfile.mkdtemp(dir=path.parent))
        (label_dir / LABEL_MAP_NAME).write_text(self._label_map_json() + "\n")
        module.label_map = tf.saved_model.Asset(str(label_dir / LABEL_MAP_NAME))
        tf.saved_model.save(
            module,
            str(path),
            signatures={"serving_default": module.serve.get_concrete_function()},
        )
        if self.roi_align_implementation == "tf":
            bad = non_stock_ops(path)
            if bad:
                raise ValueError(f"the exported graph holds ops a stock TensorFlow lacks: {bad}")
        write_warmup_requests(path / WARMUP_PATH, input_type, self.graph)

    def _label_map_json(self) -> str:
        categories = self.graph.categories
        if categories is None:  # RPN only: one class, "object"
            categories = CategoryMap([{"id": 1, "name": "object"}])
        return categories.to_json()


def warmup_images(data_config: DataConfig, max_image_pixels: int | None = None) -> list[np.ndarray]:
    """Two uint8 RGB images ``[H, W, 3]`` (a gradient, portrait and landscape) whose
    resized sizes span what ``data_config`` produces, shrunk to at most
    ``max_image_pixels`` each."""
    side = max(data_config.min_size)
    if max_image_pixels is not None:
        side = max(1, min(side, math.isqrt(max_image_pixels * 3 // 4)))
    images = []
    for height, width in ((side, side * 4 // 3), (side * 4 // 3, side)):
        y, x = np.mgrid[0:height, 0:width]
        images.append(np.stack([y * 255 // height, x * 255 // width, (x + y) % 256], -1))
    return [image.astype(np.uint8) for image in images]


def write_warmup_requests(path: Path, input_type: str, graph: InferenceGraph) -> None:
    """Writes TensorFlow Serving warm-up requests for ``graph``: a TFRecord of
    ``PredictionLog`` with a ``serving_default`` ``PredictRequest`` of one image and one of
    two images (one request per image size for ``image_tensor``, whose batches share a
    size; one image only where ``graph.max_batch_size`` is 1), all within its limits."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    images = warmup_images(graph.data_config, graph.max_image_pixels)
    if input_type == "image_tensor":
        batches = [image[None] for image in images]
    else:
        encoded = [tf.io.encode_png(image).numpy() for image in images]
        if input_type == "tf_example":
            encoded = [
                tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            IMAGE_FEATURE_KEY: tf.train.Feature(
                                bytes_list=tf.train.BytesList(value=[data])
                            )
                        }
                    )
                ).SerializeToString()
                for data in encoded
            ]
        batches = [np.array(encoded[:1], object), np.array(encoded, object)]
        if graph.max_batch_size == 1:
            batches = batches[:1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name="serving_default")
            )
            request.inputs[input_type].CopyFrom(tf.make_tensor_proto(batch))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def export_saved_model(
    model: keras.Model,
    export_dir: str | os.PathLike[str],
    data_config: DataConfig,
    categories: CategoryMap | None = None,
    input_type: str = "image_bytes",
    version: int | None = None,
    full_masks: bool = False,
    overwrite: bool = False,
    mask_threshold: float = 0.5,
    mask_paste: str = "exact",
    max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Path:
    """``SavedModelExporter(model, data_config, categories, mask_threshold, mask_paste=...,
    max_batch_size=..., max_image_pixels=...).export(...)``; returns
    ``EXPORT_DIR/<version>``."""
    exporter = SavedModelExporter(
        model,
        data_config,
        categories,
        mask_threshold,
        mask_paste=mask_paste,
        max_batch_size=max_batch_size,
        max_image_pixels=max_image_pixels,
    )
    return exporter.export(export_dir, input_type, version, full_masks, overwrite)
