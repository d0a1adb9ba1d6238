"""Argument groups that several ``kmask`` commands share, and how they are read."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kmask.config.eval_config import PRECISIONS

if TYPE_CHECKING:
    from kmask.data.category_map import CategoryMap
    from kmask.evaluation import Predictor
    from kmask.evaluation.tiled_detection import TiledDetection
    from kmask.runs import InferenceSource


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable): config overrides, a list in ``args.set``; a value
    without ``=`` is a usage error of the command (``--set train.max_steps 150``)."""
    parser.add_argument(
        "--set", action="append", default=[], type=_key_value, metavar="KEY=VALUE", help=help
    )


def _key_value(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def add_flag(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """An on/off option ``flag`` (``args.<flag>`` False unless given)."""
    parser.add_argument(flag, action="store_true", help=help)


def add_overwrite_run_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite`` of the commands that write a whole folder (``OutputFolder``)."""
    add_flag(
        parser,
        "--overwrite",
        "replace an existing --out that kmask wrote (never one holding the input, other files "
        "or a running kmask train)",
    )


def add_inference_arguments(
    parser: argparse.ArgumentParser,
    extra_precisions: tuple[str, ...] = (),
    precision_note: str = "",
) -> None:
    """The trained model of ``predict``, ``evaluate`` and ``export``: ``--run`` or
    ``--checkpoint``, with ``--config`` and ``--set`` (read by ``inference_source``), and
    ``--precision`` (``PRECISIONS`` and ``extra_precisions``, its help ending with
    ``precision_note``)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run",
        help="run directory of kmask train or kmask convert-weights (config.yaml, latest "
        "checkpoint, categories.json)",
    )
    source.add_argument(
        "--checkpoint",
        help="a checkpoint file (ckpt-*.weights.h5); its run "
        "directory's config.yaml is used unless --config is given",
    )
    parser.add_argument("--config", help="experiment YAML the checkpoint was trained with")
    add_set_argument(parser, "override a config field (repeatable)")
    parser.add_argument(
        "--precision",
        choices=(*PRECISIONS, *extra_precisions),
        default="float32",
        help="what the model computes in: float32 (default), bfloat16 (several times faster "
        "on CPUs with AMX and on recent GPUs), float16 (GPUs only), or auto (bfloat16 where it is "
        "native, float32 elsewhere; kmask info says what auto picks here). Boxes, NMS, "
        "scores and mask pasting stay float32" + precision_note,
    )


def inference_source(args: argparse.Namespace) -> InferenceSource:
    """The model that ``add_inference_arguments``' flags name (``InferenceSource.resolve``:
    raises ``FileNotFoundError`` or ``ConfigError``)."""
    from kmask.runs import InferenceSource

    return InferenceSource.resolve(
        run=args.run or None,
        checkpoint=args.checkpoint,
        config=args.config,
        overrides=tuple(args.set),
    )


def inference_precision(args: argparse.Namespace) -> str:
    """``--precision`` resolved on this machine (``InferencePrecision``); says what
    ``auto`` picked and why on stdout."""
    from kmask.modeling.inference_precision import InferencePrecision

    precision = InferencePrecision.resolve(args.precision)
    if args.precision == "auto":
        print(f"--precision auto: {precision.name} ({precision.reason})")
    return precision.name


def add_tile_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tile``, ``--tile-overlap`` and ``--tile-with-full-image`` (predict, evaluate)."""
    parser.add_argument(
        "--tile",
        type=int,
        metavar="SIZE",
        help="run each image as overlapping SIZE px tiles at native resolution and merge "
        "their detections (images far larger than the training size)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=float,
        default=None,
        metavar="FRACTION",
        help="with --tile: share of a tile that neighbours overlap, in [0, 0.9] (0.2)",
    )
    add_flag(
        parser,
        "--tile-with-full-image",
        "with --tile: also run the whole image, resized as the config says, for objects "
        "larger than a tile",
    )


def check_tile_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the flag: ``--tile-overlap`` or ``--tile-with-full-image`` without
    ``--tile``, or a tile size or overlap out of range (before any model is loaded)."""
    from kmask.evaluation.tiled_detection import TiledDetection

    if args.tile is None:
        if args.tile_with_full_image or args.tile_overlap is not None:
            raise ValueError("--tile-overlap and --tile-with-full-image need --tile")
        return
    try:
        TiledDetection.check(args.tile, _overlap(args))
    except ValueError as error:
        raise ValueError(f"--tile: {error}") from None


def tiling(
    args: argparse.Namespace, predictor: Predictor, categories: CategoryMap
) -> TiledDetection | None:
    """The ``TiledDetection`` that ``add_tile_arguments``' flags (checked by
    ``check_tile_arguments``) ask for, None without ``--tile``."""
    from kmask.evaluation.tiled_detection import TiledDetection

    if args.tile is None:
        return None
    return TiledDetection(
        predictor, categories, args.tile, _overlap(args), args.tile_with_full_image
    )


def _overlap(args: argparse.Namespace) -> float:
    return 0.2 if args.tile_overlap is None else args.tile_overlap
