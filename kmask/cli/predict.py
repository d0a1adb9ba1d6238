"""``kmask predict``: draw predicted masks, boxes, class names and scores over images (PNG) and
write their detections as COCO JSON in source-image pixels."""

from __future__ import annotations

import argparse
import os

from kmask.cli.arguments import (
    add_inference_arguments,
    add_tile_arguments,
    check_tile_arguments,
    inference_precision,
    inference_source,
    tiling,
)
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inference_arguments(parser)
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, or folders of images"
    )
    parser.add_argument("--out", help="output folder (default with --run: RUN/predictions)")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="detections below this score are left out (default "
        "eval.visualization_score_threshold, 0.5)",
    )
    parser.add_argument("--limit", type=int, default=None, help="predict only the first N images")
    parser.add_argument(
        "--num-proposals",
        type=int,
        default=20,
        help="RPN-only models: draw and write the N best proposals of each "
        "image, whatever their score (20)",
    )
    add_tile_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.data.category_map import CategoryMap
    from kmask.errors import ConfigError, DataError
    from kmask.evaluation import PredictionWriter, Predictor

    if args.num_proposals < 0:
        return fail("predict", "--num-proposals must be >= 0", 2)
    if args.limit is not None and args.limit <= 0:
        return fail("predict", "--limit must be positive", 2)
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        return fail("predict", "--score-threshold must lie in [0, 1]", 2)
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        return fail("predict", f"--out {args.out} is a file, not a folder", 2)
    try:
        check_tile_arguments(args)
        source = inference_source(args)
        config = source.config
        paths = PredictionWriter.image_paths(args.images, args.limit)
        if not paths:
            raise FileNotFoundError(f"no images in {' '.join(args.images)}")
        if args.out:
            out = Path(args.out)
        elif source.run is not None:
            out = source.run.predictions_dir
        else:
            raise ConfigError("--out is required with --checkpoint")
        categories = source.categories()
        if categories is None:
            categories = CategoryMap.placeholder(config.model.num_classes)
        predictor = Predictor.from_checkpoint(config, source.checkpoint, inference_precision(args))
        tiles = tiling(args, predictor, categories)
        out.mkdir(parents=True, exist_ok=True)
    except (ConfigError, DataError, FileNotFoundError, ValueError, OSError) as error:
        return fail("predict", str(error), 2)
    threshold = (
        args.score_threshold
        if args.score_threshold is not None
        else config.eval.visualization_score_threshold
    )
    writer = PredictionWriter(
        predictor,
        categories,
        out,
        score_threshold=threshold,
        num_proposals=args.num_proposals,
        on_skip=lambda path, reason: fail("predict", f"skipping {path}: {reason}"),
        tiling=tiles,
    )
    try:
        writer.write(paths)
    except (OSError, ValueError) as error:
        return fail("predict", str(error), 1)
    print(writer.summary())
    return 1 if writer.skipped else 0
