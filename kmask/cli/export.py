"""``kmask export``: export a trained model for TensorFlow Serving (SavedModel, stock ops only)
or ONNX Runtime; decoding, resizing and the mapping back to image pixels and category ids happen
inside the exported graph."""

from __future__ import annotations

import argparse

from kmask.cli.arguments import (
    add_flag,
    add_inference_arguments,
    inference_precision,
    inference_source,
)
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inference_arguments(parser)
    parser.add_argument(
        "--out",
        required=True,
        help="saved_model: the model base path (writes OUT/<version>/); onnx: the .onnx file, "
        "or a folder for OUT/model.onnx",
    )
    parser.add_argument(
        "--format",
        default="saved_model",
        choices=("saved_model", "onnx"),
        help="saved_model: a SavedModel for TensorFlow Serving (default); onnx: an ONNX file "
        "for ONNX Runtime",
    )
    parser.add_argument(
        "--input-type",
        default="image_bytes",
        choices=("image_bytes", "image_tensor", "tf_example"),  # kmask.export.INPUT_TYPES
        help="saved_model input: encoded images (string [B]), uint8 [B,H,W,3], or serialized "
        "tf.train.Example with image/encoded (image_bytes); onnx always takes image_tensor",
    )
    parser.add_argument(
        "--version", type=int, default=None, help="version folder (default: one above the largest)"
    )
    add_flag(
        parser,
        "--full-masks",
        "also output masks pasted into the source image (detection_full_masks, uint8)",
    )
    add_flag(parser, "--overwrite", "replace an existing version folder or file")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="saved_model: a request of more images is refused (default 16)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="saved_model: a request with an image of more pixels (height x width, read from "
        "the header of encoded images before decoding) is refused (default 25000000)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.errors import BuildError, ConfigError, DataError
    from kmask.export import export_onnx, export_saved_model
    from kmask.export.onnx_exporter import check_output_file, require_custom_op
    from kmask.export.saved_model_exporter import version_directory

    limits = {"max_batch_size": args.max_batch_size, "max_image_pixels": args.max_image_pixels}
    numbers = {"version": args.version, **limits}
    for name, value in numbers.items():
        if value is not None and value <= 0:
            return fail("export", f"--{name.replace('_', '-')} must be a positive integer", 2)
    if args.format == "onnx" and (args.full_masks or any(v is not None for v in numbers.values())):
        return fail(
            "export",
            "--version, --full-masks, --max-batch-size and --max-image-pixels apply to "
            "--format saved_model",
            2,
        )
    if args.format == "onnx" and args.precision != "float32":
        return fail(
            "export",
            f"--precision {args.precision} applies to --format saved_model: ONNX is exported "
            "in float32 (ONNX Runtime's CPU provider has no bfloat16 Conv, MatMul or Relu "
            "kernels: 'Could not find an implementation for Conv(22)' in onnxruntime 1.32)",
            2,
        )
    out = Path(args.out)
    if args.format == "onnx" and out.suffix != ".onnx":
        out = out / "model.onnx"
    try:  # the output path, before the model is loaded and converted
        if args.format == "onnx":
            check_output_file(out, args.overwrite)
        else:
            version_directory(out, args.version, args.overwrite)
    except (ValueError, OSError) as error:
        return fail("export", str(error), 2)
    if args.format == "onnx":  # the op, before the model is loaded
        try:
            require_custom_op()
        except BuildError as error:
            return fail("export", f"{error}; {error.fix}", 1)
    try:
        source = inference_source(args)
        config, checkpoint = source.config, source.checkpoint
        categories = source.categories()
        model = source.load_model(inference_precision(args))
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        return fail("export", str(error), 2)
    try:
        if args.format == "onnx":
            path = export_onnx(model, out, config.data, categories, overwrite=args.overwrite)
        else:
            path = export_saved_model(
                model,
                out,
                config.data,
                categories,
                input_type=args.input_type,
                version=args.version,
                full_masks=args.full_masks,
                overwrite=args.overwrite,
                mask_threshold=config.eval.mask_threshold,
                mask_paste=config.eval.mask_paste,
                **{name: value for name, value in limits.items() if value is not None},
            )
    except FileExistsError as error:
        return fail("export", f"{error}", 2)
    except (ImportError, ValueError, OSError) as error:
        return fail("export", f"cannot export {checkpoint} to {out}: {error}", 1)
    print(f"exported {checkpoint} to {path}")
    return 0
