"""Evaluation: COCO metrics (pycocotools COCOeval bbox / segm, proposal AR) and inference.

    from kmask.evaluation import COCOEvaluator, Predictor
    predictor = Predictor(model, config.data)
    evaluator = COCOEvaluator("val.json", categories)
    metrics = evaluator.run(predictor, build_dataset(config.data, training=False, ...))
    evaluator.write_results("results.json")   # COCO results: original ids and pixels, RLE

Modules: ``coco_evaluator.COCOEvaluator``, ``predictor.Predictor`` (inference and mapping
to source-image pixels), ``proposal_recall.ProposalRecall``.
"""

from kmask.evaluation.coco_evaluator import COCOEvaluator, format_metrics
from kmask.evaluation.predictor import Predictor
from kmask.evaluation.proposal_recall import ProposalRecall

__all__ = ["COCOEvaluator", "Predictor", "ProposalRecall", "format_metrics"]
