"""Accuracy of the TFLite exports (issue 25): COCO box and mask AP of each ``--precision``
run in the LiteRT interpreter, next to the same graph run by TensorFlow, on a trained run's
validation images, and how many of TensorFlow's detections each LiteRT model reproduces.

All in one process: the exported graph (``InferenceGraph`` over one fixed-size uint8
image, pure-TensorFlow RoIAlign) is run by TensorFlow as the reference, then converted by
``TfliteExporter`` at each precision and run by ``ai_edge_litert``. Every image is resized
to the export size (bilinear) and the boxes scaled back; the box-frame masks of every
model are pasted into the image the same way here (bilinear to the rounded box, threshold
0.5), so the APs differ only by the models. A TensorFlow detection scoring at least 0.5 is
*reproduced* when the LiteRT model has one of the same class with box IoU >= 0.5 and a
score within 0.05.

Usage::

    python benchmarks/tflite_accuracy.py --run runs/shapes_tiny --json data/shapes/val.json \\
        --images data/shapes
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def _paste(mask: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    y1, x1, y2, x2 = (int(round(v)) for v in box)
    y1, x1 = max(y1, 0), max(x1, 0)
    y2, x2 = min(max(y2, y1 + 1), height), min(max(x2, x1 + 1), width)
    full = np.zeros((height, width), np.uint8)
    if y2 > y1 and x2 > x1:
        resized = Image.fromarray(mask.astype(np.float32)).resize((x2 - x1, y2 - y1))
        full[y1:y2, x1:x2] = np.asarray(resized) >= 0.5
    return full


def _results(outputs: dict[str, np.ndarray], image_id: int, scale: tuple, size: tuple) -> list:
    """COCO results of one image's graph outputs (boxes in export pixels)."""
    from pycocotools import mask as mask_utils

    count = int(outputs["num_detections"][0])
    sy, sx = scale
    results = []
    for i in range(count):
        y1, x1, y2, x2 = np.asarray(outputs["detection_boxes"][0, i], np.float64) * [sy, sx, sy, sx]
        result = {
            "image_id": image_id,
            "category_id": int(outputs["detection_classes"][0, i]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(outputs["detection_scores"][0, i]),
        }
        if "detection_masks" in outputs:
            full = _paste(outputs["detection_masks"][0, i], np.array([y1, x1, y2, x2]), *size)
            rle = mask_utils.encode(np.asfortranarray(full))
            result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        results.append(result)
    return results


def _ap(coco: Any, results: list, iou_type: str, image_ids: list[int]) -> float:
    from pycocotools.cocoeval import COCOeval

    from kmask.evaluation.coco_results import load_results, quiet

    evaluator = COCOeval(coco, load_results(coco, results, iou_type), iou_type)
    evaluator.params.imgIds = image_ids
    quiet(evaluator.evaluate)
    quiet(evaluator.accumulate)
    quiet(evaluator.summarize)
    return float(evaluator.stats[0])


def _reproduced(reference: list, results: list) -> tuple[int, int]:
    def iou(a: list, b: list) -> float:
        ax, ay, aw, ah = a
        bx, by, bw, bh = b
        w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
        h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
        return w * h / max(aw * ah + bw * bh - w * h, 1e-9)

    wanted = [r for r in reference if r["score"] >= 0.5]
    found = sum(
        any(
            o["image_id"] == r["image_id"]
            and o["category_id"] == r["category_id"]
            and abs(o["score"] - r["score"]) <= 0.05
            and iou(o["bbox"], r["bbox"]) >= 0.5
            for o in results
        )
        for r in wanted
    )
    return found, len(wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a kmask run directory")
    parser.add_argument("--json", required=True, help="COCO annotation file")
    parser.add_argument("--images", required=True, help="its image folder")
    parser.add_argument("--limit", type=int, default=50, help="images (50)")
    args = parser.parse_args()

    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image
    from pycocotools.coco import COCO

    from kmask.evaluation.coco_results import quiet
    from kmask.export.inference_graph import InferenceGraph, with_roi_align
    from kmask.export.tflite_exporter import PRECISIONS, TfliteExporter
    from kmask.runs import InferenceSource

    source = InferenceSource.resolve(run=args.run)
    model = source.load_model("float32")
    categories = source.categories()
    coco = quiet(COCO, args.json)
    image_ids = sorted(coco.imgs)[: args.limit]
    exporters = {
        p: TfliteExporter(model, source.config.data, categories, precision=p) for p in PRECISIONS
    }
    height, width = exporters["float32"].input_size
    images = []
    for image_id in image_ids:
        entry = coco.imgs[image_id]
        picture = Image.open(f"{args.images}/{entry['file_name']}").convert("RGB")
        size = (entry["height"], entry["width"])
        scale = (size[0] / height, size[1] / width)
        images.append((image_id, np.asarray(picture.resize((width, height))), scale, size))

    graph = InferenceGraph(with_roi_align(model, "tf"), source.config.data, categories)
    run_tf = tf.function(lambda image: graph(image, "image_tensor"))
    runs = {
        "TensorFlow": lambda image: {
            k: np.asarray(v) for k, v in run_tf(tf.constant(image[None])).items()
        }
    }
    for precision, exporter in exporters.items():
        runner = Interpreter(model_content=exporter.convert()).get_signature_runner()
        runs[f"LiteRT {precision}"] = lambda image, r=runner: r(image_tensor=image[None])
    reference = None
    print(f"{len(images)} images of {args.json} at {height}x{width}")
    for name, run in runs.items():
        results = []
        for image_id, pixels, scale, size in images:
            results += _results(run(pixels), image_id, scale, size)
        line = f"{name:>20}: box AP {_ap(coco, results, 'bbox', image_ids):.4f}"
        if any("segmentation" in r for r in results):
            line += f", mask AP {_ap(coco, results, 'segm', image_ids):.4f}"
        if reference is None:
            reference = results
        else:
            found, wanted = _reproduced(reference, results)
            line += f"; reproduces {found}/{wanted} TensorFlow detections (score >= 0.5)"
        print(line)


if __name__ == "__main__":
    main()
