"""``kmask convert-cityscapes``: convert Cityscapes gtFine instance annotations (instanceIds
PNGs) to COCO JSON (instances_<split>.json, exact-pixel RLE masks, group regions as iscrowd)
and, with --shards, TFRecord shards; atomically."""

from __future__ import annotations

import argparse

from kmask.cli.arguments import add_flag, add_overwrite_run_argument
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", required=True, help="the Cityscapes folder with leftImg8bit/ and gtFine/"
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument(
        "--splits", nargs="+", default=["train", "val"], help="splits to convert (train val)"
    )
    add_flag(
        parser,
        "--shards",
        "also write the TFRecord shards of convert-coco (instances_<split>-*.tfrecord)",
    )
    parser.add_argument(
        "--num-shards", type=int, default=None, help="shards per split (one per 1000 images)"
    )
    add_overwrite_run_argument(parser)


def run(args: argparse.Namespace) -> int:
    from kmask.data import DataError
    from kmask.data.cityscapes_converter import CityscapesConverter

    if args.num_shards is not None and not args.shards:
        return fail("convert-cityscapes", "--num-shards needs --shards", 2)
    try:
        converter = CityscapesConverter(args.root, progress=True)
        paths = converter.write(
            args.out,
            args.splits,
            shards=args.shards,
            num_shards=args.num_shards,
            overwrite=args.overwrite,
        )
    except FileExistsError as error:
        return fail("convert-cityscapes", str(error), 2)
    except (DataError, OSError) as error:
        return fail("convert-cityscapes", str(error), 1)
    except KeyboardInterrupt:
        return fail("convert-cityscapes", f"interrupted; {args.out} was not written", 130)
    print(f"wrote {len(paths)} file(s) to {args.out}: {', '.join(p.name for p in paths[:4])}")
    for split in args.splits:
        print(
            f"train or evaluate with --json {args.out}/instances_{split}.json --images "
            f"{converter.images_dir(split)}"
        )
    return 0
