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
    parser.add_argument(
        "--num-val", type=int, default=None, help="validation images (50; 5 with --scene)"
    )
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
    parser.add_argument(
        "--scene",
        metavar="WIDTHxHEIGHT",
        help="a large-scene dataset for tiled inference: validation images of this size "
        "with many small shapes (up to --scene-objects, some on any tile border), training "
        "images of --image-size with the same shapes (crops of such scenes)",
    )
    parser.add_argument(
        "--scene-objects",
        type=int,
        default=100,
        help="with --scene: most shapes per scene (100, COCO's detections per image)",
    )
    parser.add_argument(
        "--object-size",
        metavar="MIN,MAX",
        help="shape diameters in pixels (default: 16%%-44%% of the image side; 20,40 with --scene)",
    )


def run(args: argparse.Namespace) -> int:
    from kmask.data.shapes_dataset import ShapesDataset
    from kmask.data.stick_figures_dataset import StickFiguresDataset

    num_val = args.num_val if args.num_val is not None else 5 if args.scene else 50
    for name, value in (("num_train", args.num_train), ("num_val", num_val)):
        if value < 0:
            return fail("make-shapes", f"--{name.replace('_', '-')} must be >= 0", 2)
    if args.keypoints and (args.shapes is not None or args.scene or args.object_size):
        return fail("make-shapes", "--keypoints excludes --shapes, --scene and --object-size", 2)
    if args.scene_objects < 1:
        return fail("make-shapes", "--scene-objects must be >= 1", 2)
    try:
        scene = _size_pair(args.scene, "x", int, "--scene", "WIDTHxHEIGHT") if args.scene else None
        object_size = (20.0, 40.0) if scene else None
        if args.object_size:
            object_size = _size_pair(args.object_size, ",", float, "--object-size", "MIN,MAX")
    except ValueError as error:
        return fail("make-shapes", str(error), 2)
    names = args.shapes.split(",") if args.shapes is not None else None
    try:
        if args.keypoints:
            train = StickFiguresDataset(args.image_size, seed=args.seed)
        else:
            train = ShapesDataset(
                args.image_size, seed=args.seed, shapes=names, object_size=object_size
            )
        val = train
        if scene is not None:
            width, height = scene
            val = ShapesDataset(
                (height, width),
                seed=args.seed,
                max_shapes=args.scene_objects,
                shapes=names,
                object_size=object_size,
            )
        paths = {
            "train": train.write_split(args.out, "train", args.num_train, progress=True),
            "val": val.write_split(args.out, "val", num_val, progress=True),
        }
    except ValueError as error:
        flag = "--shapes" if "shapes must" in str(error) else "--image-size"
        flag = "--object-size" if "object_size" in str(error) else flag
        return fail("make-shapes", f"{flag}: {error}", 2)
    except OSError as error:
        return fail("make-shapes", f"cannot write to {args.out}: {error}", 1)
    print(
        f"wrote {paths['train']} ({args.num_train} images) and {paths['val']} "
        f"({num_val} images); image paths are relative to {args.out}"
    )
    return 0


def _size_pair(
    text: str, separator: str, kind: type, flag: str, form: str
) -> tuple[float, float] | tuple[int, int]:
    """``"A<separator>B"`` as two positive numbers of ``kind``; ValueError naming ``flag``."""
    try:
        first, second = (kind(part) for part in text.lower().split(separator))
    except ValueError:
        raise ValueError(f"{flag} must be {form}, got {text!r}") from None
    if first <= 0 or second <= 0:
        raise ValueError(f"{flag} must be {form} with positive numbers, got {text!r}")
    return first, second
