"""``kmask convert-coco``: convert a COCO JSON + image folder to TFRecord shards (Object
Detection API / Model Garden feature keys), in parallel and atomically."""

from __future__ import annotations

import argparse

from kmask.cli.arguments import add_flag
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="COCO annotation file")
    parser.add_argument(
        "--images", required=True, help="folder the file_name entries are relative to"
    )
    parser.add_argument(
        "--out", required=True, help="output folder for the shards and categories.json"
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=None,
        help="number of shards (default: one per 1000 images)",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="shard name prefix (default: the JSON file name without .json)",
    )
    add_flag(parser, "--strict", "stop at the first bad image or annotation instead of skipping it")
    add_flag(
        parser,
        "--allow-outside-images",
        "read file_name entries that are absolute or leave --images through '..' "
        "(skipped by default)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.data import CocoDataset, DataError, ShardWriter

    try:
        dataset = CocoDataset(
            args.json,
            args.images,
            strict=args.strict,
            allow_outside_images=args.allow_outside_images,
        )
        writer = ShardWriter(
            args.out, num_shards=args.num_shards, prefix=args.prefix or Path(args.json).stem
        )
        paths = writer.write(dataset, progress=True)
    except (DataError, OSError) as error:
        return fail("convert-coco", str(error), 1)
    except KeyboardInterrupt:
        return fail("convert-coco", "interrupted; no shard was written", 130)
    print(
        f"wrote {len(paths)} shard(s) to {args.out}: {writer.images_written} images, "
        f"{writer.instances_written} instances ({paths[0].name} ...)"
    )
    print(dataset.report.summary())
    return 0
