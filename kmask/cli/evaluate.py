"""``kmask evaluate``: COCO box/mask AP (pycocotools) and proposal AR of a trained model; writes
COCO results and flat metrics JSON."""

from __future__ import annotations

import argparse
import contextlib

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
    parser.add_argument("--json", help="COCO annotation file (default: eval.json_path)")
    parser.add_argument("--images", help="its image folder (default: eval.images_dir)")
    parser.add_argument(
        "--metrics-out", help="flat metrics JSON (default with --run: RUN/metrics.json)"
    )
    parser.add_argument(
        "--results-out", help="COCO results JSON (default with --run: RUN/results.json)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="eval.batch_size")
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="evaluate only the first N images (eval.max_images)",
    )
    add_tile_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kmask.data import open_dataset
    from kmask.data.image_io import output_file_problem
    from kmask.errors import ConfigError, DataError
    from kmask.evaluation import COCOEvaluator, DetectorMode, Predictor
    from kmask.evaluation.coco_evaluator import evaluation_batches, oks_sigmas
    from kmask.runs.checkpoints import checkpoint_step
    from kmask.runs.run_directory import atomic_write_json

    for name in ("batch_size", "max_images"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            return fail("evaluate", f"--{name.replace('_', '-')} must be positive", 2)
    for name in ("results_out", "metrics_out"):
        problem = output_file_problem(getattr(args, name))
        if problem:
            return fail("evaluate", f"--{name.replace('_', '-')} {problem}", 2)
    try:
        check_tile_arguments(args)
        source = inference_source(args)
        config, checkpoint, run_dir = source.config, source.checkpoint, source.run
        results_out = args.results_out or (run_dir.results_path if run_dir is not None else None)
        metrics_out = args.metrics_out or (run_dir.metrics_path if run_dir is not None else None)
        for name, path in (("results_out", results_out), ("metrics_out", metrics_out)):
            problem = None if getattr(args, name) else output_file_problem(path)
            if problem:  # a default path in the run directory (a given one is checked above)
                raise ValueError(f"--{name.replace('_', '-')} {problem}")
        json_path = args.json or config.eval.json_path
        images_dir = args.images or config.eval.images_dir
        if not (json_path and images_dir):
            raise ConfigError(
                "no evaluation data: give --json FILE --images DIR (or set "
                "eval.json_path and eval.images_dir)"
            )
        sigmas = config.eval.keypoint_oks_sigmas
        evaluator = COCOEvaluator(json_path, source.categories(), keypoint_sigmas=sigmas)
        if config.model.keypoint_head is not None:  # no sigmas: fail before predicting
            oks_sigmas(evaluator.categories, sigmas)
        if evaluator.categories.num_classes != config.model.num_classes:
            raise ConfigError(
                f"{json_path} has {evaluator.categories.num_classes} categories but the model "
                f"has model.num_classes={config.model.num_classes}"
            )
        dataset = open_dataset(
            json_path=json_path, images_dir=images_dir, strict=config.data.strict
        )
        batches, count, total = evaluation_batches(
            dataset,
            config.data,
            args.batch_size or config.eval.batch_size,
            args.max_images or config.eval.max_images,
        )
        predictor = Predictor.from_checkpoint(config, checkpoint, inference_precision(args))
        tiles = tiling(args, predictor, evaluator.categories)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        return fail("evaluate", str(error), 2)
    how = f" in {args.tile} px tiles" if tiles is not None else ""
    print(f"evaluating {checkpoint} on {count} images of {json_path}{how}")
    try:
        if tiles is not None:
            metrics = evaluator.run_images(
                lambda image, image_id: tiles.detect(image, 0.0).as_predictor_dict(
                    image_id, decode_rles=False
                ),
                dataset,
                count,
            )
        else:
            metrics = evaluator.run(predictor, batches, total=total)
    except (DataError, ValueError) as error:
        return fail("evaluate", str(error), 1)
    failed = []  # each output is written even when another one fails
    if results_out:
        try:
            evaluator.write_results(results_out)
            what = "proposals" if evaluator.mode is DetectorMode.RPN else "COCO results"
            print(f"wrote {what} to {results_out}")
        except OSError as error:
            failed.append(f"cannot write --results-out {results_out}: {error.strerror or error}")
    if metrics_out:
        record = {**evaluator.metrics_record(metrics), "checkpoint": str(checkpoint)}
        with contextlib.suppress(ValueError):
            record["step"] = checkpoint_step(checkpoint)
        try:
            atomic_write_json(metrics_out, record)
            print(f"wrote metrics to {metrics_out}")
        except OSError as error:
            failed.append(f"cannot write --metrics-out {metrics_out}: {error.strerror or error}")
    print(evaluator.summary(metrics))
    return fail("evaluate", "; ".join(failed), 1) if failed else 0
