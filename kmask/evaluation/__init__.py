"""Inference and evaluation: the one-call ``Detector`` (what ``kmask.load_model`` returns),
COCO metrics (pycocotools COCOeval bbox / segm, proposal AR) and inference, for every
detector mode (Mask R-CNN, Faster R-CNN without masks, RPN only).

    from kmask.evaluation import COCOEvaluator, Predictor
    predictor = Predictor(model, config.data)
    evaluator = COCOEvaluator("val.json", categories)
    metrics = evaluator.run(predictor, build_dataset(config.data, training=False, ...))
    print(evaluator.summary(metrics))         # which metrics apply, and their values
    evaluator.write_results("results.json")   # COCO results: original ids and pixels, RLE

    from kmask.evaluation import PredictionWriter
    writer = PredictionWriter(predictor, categories, "predictions", score_threshold=0.5)
    writer.write(PredictionWriter.image_paths(["images/"]))  # PNGs + detections.json

The mode is read off the model's outputs (``DetectorMode``): masks present -> bbox and segm
AP; detections without masks -> bbox AP; proposals only -> proposal recall.

    from kmask.evaluation import Detector
    detector = Detector(predictor, categories)   # or kmask.load_model("runs/x")
    result = detector.detect("photo.jpg")         # ImageDetections in photo.jpg's pixels

Modules: ``detector.Detector`` and ``image_detections.ImageDetections`` (one call from
images to detections), ``coco_evaluator.COCOEvaluator``, ``predictor.Predictor`` (inference
and mapping to source-image pixels), ``prediction_writer.PredictionWriter`` (pictures and
JSON of image files), ``proposal_recall.ProposalRecall``, ``detector_mode.DetectorMode``.
"""

from kmask.evaluation.coco_evaluator import COCOEvaluator, format_metrics
from kmask.evaluation.detector import Detector
from kmask.evaluation.detector_mode import DetectorMode
from kmask.evaluation.image_detections import ImageDetections
from kmask.evaluation.prediction_writer import PredictionWriter
from kmask.evaluation.predictor import Predictor
from kmask.evaluation.proposal_recall import ProposalRecall

__all__ = [
    "COCOEvaluator",
    "Detector",
    "DetectorMode",
    "ImageDetections",
    "PredictionWriter",
    "Predictor",
    "ProposalRecall",
    "format_metrics",
]
