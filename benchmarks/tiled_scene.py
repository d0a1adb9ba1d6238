"""Tiled vs resized whole-image detection on large scenes (issue 25).

Given a trained run and a scene dataset of ``kmask make-shapes --scene``, it evaluates the
scenes twice with pycocotools, in one process on one machine:

- *resized*: each scene as the run's config resizes whole images (``kmask evaluate``);
- *tiled*: each scene in ``--tile`` px tiles at native resolution (``kmask evaluate
  --tile``),

and prints for each: mask and box AP / AP50, seconds per megapixel and the growth of the
process's peak resident memory during the pass. For the tiled pass it also prints how the
objects that a tile border cuts (their box crosses the edge of some tile's window) were
detected: once, more than once, or missed, where a detection of the object is one of its
category scoring at least ``--score`` whose mask IoU with it is at least 0.5
(pycocotools' ``iou``); the same counts for the objects no tile border cuts are the
model's own rate, the baseline.

Usage (the figures of README "Large images in tiles")::

    kmask make-shapes --out scenes --scene 2000x1500 --image-size 128 --num-train 200 \\
        --num-val 3
    kmask train --config shapes_tiny --out runs/scenes --set train.json_path=scenes/train.json \\
        --set train.images_dir=scenes --set eval.json_path=scenes/val.json \\
        --set eval.images_dir=scenes --set train.max_steps=1200 --set "train.lr_steps=[900,1100]"
    python benchmarks/tiled_scene.py --run runs/scenes --json scenes/val.json --images scenes \\
        --tile 256
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _detection_counts(
    coco: Any, tiling: Any, results: list[dict[str, Any]], score: float
) -> dict[str, dict[str, int]]:
    """How often each annotated object was detected, for the objects that a tile's window
    cuts (``"cut"``) and the others (``"whole"``): ``{"once", "more", "missed"}`` counts,
    a detection of an object being one of its category scoring at least ``score`` with
    mask IoU at least 0.5."""
    from pycocotools import mask as mask_utils

    counts = {kind: {"once": 0, "more": 0, "missed": 0} for kind in ("cut", "whole")}
    for image_id, entry in coco.imgs.items():
        windows = [w for w, _ in tiling.tiles(entry["height"], entry["width"])]
        found = [r for r in results if r["image_id"] == image_id and r["score"] >= score]
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False)):
            x, y, w, h = annotation["bbox"]
            cut = any(
                max(y, y1) < min(y + h, y2)
                and max(x, x1) < min(x + w, x2)
                and not (y1 <= y and y + h <= y2 and x1 <= x and x + w <= x2)
                for y1, x1, y2, x2 in windows
            )
            same = [
                r["segmentation"] for r in found if r["category_id"] == annotation["category_id"]
            ]
            hits = 0
            if same:
                rles = [dict(rle, counts=rle["counts"].encode()) for rle in same]
                hits = int(np.sum(mask_utils.iou(rles, [coco.annToRLE(annotation)], [0]) >= 0.5))
            kind = "cut" if cut else "whole"
            counts[kind]["once" if hits == 1 else "more" if hits > 1 else "missed"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a kmask run directory")
    parser.add_argument("--json", required=True, help="the scenes' COCO JSON")
    parser.add_argument("--images", required=True, help="their image folder")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels (256)")
    parser.add_argument("--overlap", type=float, default=0.2, help="tile overlap (0.2)")
    parser.add_argument("--precision", default="float32", help="float32 or bfloat16")
    parser.add_argument("--score", type=float, default=0.5, help="score of a detection (0.5)")
    args = parser.parse_args()

    from pycocotools.coco import COCO

    from kmask.data import open_dataset
    from kmask.evaluation import COCOEvaluator, Predictor
    from kmask.evaluation.coco_evaluator import evaluation_batches
    from kmask.evaluation.tiled_detection import TiledDetection
    from kmask.runs import RunDirectory

    run = RunDirectory(args.run)
    config = run.load_config()
    predictor = Predictor.from_checkpoint(config, run.latest_checkpoint(), args.precision)
    evaluator = COCOEvaluator(args.json, run.load_categories(config.model))
    dataset = open_dataset(json_path=args.json, images_dir=args.images)
    megapixels = sum(r.height * r.width for r in dataset.records) / 1e6
    print(f"{len(dataset)} scenes, {megapixels:.1f} MP in all, {args.precision}")

    tiling = TiledDetection(predictor, evaluator.categories, args.tile, args.overlap)
    passes = {
        "resized": lambda: evaluator.run(
            predictor, *evaluation_batches(dataset, config.data, 1)[::2], progress=False
        ),
        f"tiled {args.tile}": lambda: evaluator.run_images(
            lambda image, image_id: tiling.detect(image, 0.0).as_predictor_dict(
                image_id, decode_rles=False
            ),
            dataset,
            len(dataset),
            progress=False,
        ),
    }
    for name, evaluate in passes.items():
        evaluate()  # warm-up: traces the model for these shapes
        before = _peak_mib()
        start = time.perf_counter()
        metrics = evaluate()
        seconds = time.perf_counter() - start
        print(
            f"{name:>10}: mask AP {metrics['segm_AP']:.3f} (AP50 {metrics['segm_AP50']:.3f}), "
            f"box AP {metrics['bbox_AP']:.3f} (AP50 {metrics['bbox_AP50']:.3f}); "
            f"{seconds / megapixels:.2f} s/MP; peak RSS +{_peak_mib() - before:.0f} MiB "
            f"(process peak {_peak_mib():.0f} MiB)"
        )
    counts = _detection_counts(COCO(args.json), tiling, evaluator.results, args.score)
    for kind, what in (("cut", "cut by a tile border"), ("whole", "cut by no tile border")):
        found = counts[kind]
        print(
            f"objects {what}: {sum(found.values())}; detected once {found['once']}, more "
            f"than once {found['more']}, missed {found['missed']} (a detection: same "
            f"category, score >= {args.score}, mask IoU >= 0.5)"
        )


if __name__ == "__main__":
    main()
