"""``kmask make-shapes``: write the synthetic shapes dataset (COCO JSON + PNG images of circles,
squares and triangles with exact masks); deterministic for a seed."""

from __future__ import annotations

import argparse

from kmask.cli.arguments import add_flag
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="output folder (train.json, val.json, train/, val/)"
    )
    parser.add_argument("--num-train", type=int, default=200, help="training images (200)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images (50)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    add_flag(
        parser,
        "--keypoints",
        "write stick figures instead: category person with 11 keypoints, skeleton and "
        "masks in COCO person-keypoint format (configs/keypoints_tiny.yaml)",
    )
    parser.add_argument(
        "--shapes",
        metavar="NAME,NAME,...",
        help="other classes, e.g. for fine-tuning: comma-separated names such as "
        "pentagon,hexagon,ellipse,rhombus (an unknown name is refused with the list of "
        "shapes; default circle,square,triangle)",
    )


def run(args: argparse.Namespace) -> int:
    from kmask.data.shapes_dataset import ShapesDataset
    from kmask.data.stick_figures_dataset import StickFiguresDataset

    for name in ("num_train", "num_val"):
        if getattr(args, name) < 0:
            return fail("make-shapes", f"--{name.replace('_', '-')} must be >= 0", 2)
    if args.shapes is not None and args.keypoints:
        return fail("make-shapes", "--shapes and --keypoints exclude each other", 2)
    try:
        if args.shapes is not None:
            shapes = ShapesDataset(args.image_size, seed=args.seed, shapes=args.shapes.split(","))
        else:
            kind = StickFiguresDataset if args.keypoints else ShapesDataset
            shapes = kind(args.image_size, seed=args.seed)
        paths = shapes.write(args.out, args.num_train, args.num_val, progress=True)
    except ValueError as error:
        flag = "--shapes" if "shapes must" in str(error) else "--image-size"
        return fail("make-shapes", f"{flag}: {error}", 2)
    except OSError as error:
        return fail("make-shapes", f"cannot write to {args.out}: {error}", 1)
    print(
        f"wrote {paths['train']} ({args.num_train} images) and {paths['val']} "
        f"({args.num_val} images); image paths are relative to {args.out}"
    )
    return 0
