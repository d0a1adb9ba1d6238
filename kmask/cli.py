"""The ``kmask`` command: ``kmask SUBCOMMAND --help`` describes each subcommand.

Each subcommand is a function ``_add_NAME(subparsers)`` that registers its parser and sets
``handler``; heavy imports (TensorFlow) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _run_info(args: argparse.Namespace) -> int:
    import platform

    import keras
    import tensorflow as tf

    from kmask.ops import _custom_ops

    print(f"kmask       {_version()}")
    print(f"Python      {platform.python_version()}")
    print(f"TensorFlow  {tf.__version__} (built with CUDA: {tf.test.is_built_with_cuda()})")
    print(f"Keras       {keras.__version__}")
    status = _custom_ops.status(build=not args.no_build)
    print(f"RoIAlign    auto -> {status.auto_choice}: {status.reason}")
    print(f"  custom op library: {status.library or 'none'}")
    print(f"  CUDA kernels built: {'yes' if status.cuda_built else 'no'} ({status.cuda_reason})")
    print(f"  GPUs visible: {len(tf.config.list_physical_devices('GPU'))}")
    return 0


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="versions, and which RoIAlign implementation 'auto' picks and why"
    )
    parser.add_argument(
        "--no-build", action="store_true", help="report only; do not try to build the custom op"
    )
    parser.set_defaults(handler=_run_info)


def _run_build_ops(args: argparse.Namespace) -> int:
    from kmask.ops import _custom_ops

    library = _custom_ops.build(force=args.force, verbose=True)
    print(f"built {library}")
    return 0


def _add_build_ops(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-ops",
        help="compile the RoIAlign custom op for the installed TensorFlow (cached; also "
        "happens on first use)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.set_defaults(handler=_run_build_ops)


def _run_make_shapes(args: argparse.Namespace) -> int:
    from kmask.data.shapes_dataset import ShapesDataset

    for name in ("num_train", "num_val"):
        if getattr(args, name) < 0:
            flag = "--" + name.replace("_", "-")
            print(f"kmask make-shapes: error: {flag} must be >= 0", file=sys.stderr)
            return 2
    try:
        shapes = ShapesDataset(args.image_size, seed=args.seed)
        paths = shapes.write(args.out, args.num_train, args.num_val, progress=True)
    except ValueError as error:
        print(f"kmask make-shapes: error: --image-size: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"kmask make-shapes: error: cannot write to {args.out}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {paths['train']} ({args.num_train} images) and {paths['val']} "
          f"({args.num_val} images); image paths are relative to {args.out}")
    return 0


def _add_make_shapes(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shapes",
        help="write the synthetic shapes dataset (COCO JSON + PNG images of circles, "
        "squares and triangles with exact masks); deterministic for a seed",
    )
    parser.add_argument("--out", required=True, help="output folder (train.json, val.json, "
                        "train/, val/)")
    parser.add_argument("--num-train", type=int, default=200, help="training images (200)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images (50)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.set_defaults(handler=_run_make_shapes)


def _run_convert_coco(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.data import CocoDataset, DataError, ShardWriter

    try:
        dataset = CocoDataset(args.json, args.images, strict=args.strict)
        writer = ShardWriter(
            args.out, num_shards=args.num_shards, prefix=args.prefix or Path(args.json).stem
        )
        paths = writer.write(dataset, progress=True)
    except DataError as error:
        print(f"kmask convert-coco: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"kmask convert-coco: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kmask convert-coco: interrupted; no shard was written", file=sys.stderr)
        return 130
    print(f"wrote {len(paths)} shard(s) to {args.out}: {writer.images_written} images, "
          f"{writer.instances_written} instances ({paths[0].name} ...)")
    print(dataset.report.summary())
    return 0


def _add_convert_coco(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-coco",
        help="convert a COCO JSON + image folder to TFRecord shards (Object Detection API "
        "/ Model Garden feature keys), in parallel and atomically",
    )
    parser.add_argument("--json", required=True, help="COCO annotation file")
    parser.add_argument("--images", required=True, help="folder the file_name entries are "
                        "relative to")
    parser.add_argument("--out", required=True, help="output folder for the shards and "
                        "categories.json")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="number of shards (default: one per 1000 images)")
    parser.add_argument("--prefix", default=None,
                        help="shard name prefix (default: the JSON file name without .json)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad image or annotation instead of skipping it")
    parser.set_defaults(handler=_run_convert_coco)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kmask")
    except metadata.PackageNotFoundError:
        return "source checkout"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kmask",
        description="Mask R-CNN for TensorFlow 2 / Keras 3: make data, train, evaluate, "
        "predict. `kmask COMMAND --help` describes each command.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_info, _add_build_ops, _add_make_shapes, _add_convert_coco):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kmask`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
