"""``kmask export``: export a trained model for TensorFlow Serving (SavedModel, stock ops only),
ONNX Runtime or the LiteRT interpreter (TFLite, builtin ops only); decoding, resizing and the
mapping back to image pixels and category ids happen inside the exported graph."""

from __future__ import annotations

import argparse

from kmask.cli.arguments import (
    add_flag,
    add_inference_arguments,
    inference_precision,
    inference_source,
)
from kmask.cli.console import fail

TFLITE_ONLY = ("int8-dynamic",)  # --precision values of --format tflite alone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inference_arguments(
        parser,
        TFLITE_ONLY,
        "; --format tflite: float32 (default), float16 (half the file) or int8-dynamic "
        "(dynamic-range quantization, int8 weights)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="saved_model: the model base path (writes OUT/<version>/); onnx, tflite: the "
        ".onnx / .tflite file, or a folder for OUT/model.onnx / OUT/model.tflite",
    )
    parser.add_argument(
        "--format",
        default="saved_model",
        choices=("saved_model", "onnx", "tflite"),
        help="saved_model: a SavedModel for TensorFlow Serving (default); onnx: an ONNX file "
        "for ONNX Runtime; tflite: a .tflite file for the LiteRT interpreter (one image of "
        "a fixed size, LiteRT builtin ops only)",
    )
    parser.add_argument(
        "--input-size",
        type=_input_size,
        default=None,
        metavar="SIZE|HxW",
        help="tflite: the input image size, uint8 [1, H, W, 3] (default: the config's "
        "data.image_size, else a square of the evaluation size max(data.min_size))",
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


def _input_size(text: str) -> tuple[int, int]:
    """``SIZE`` or ``HxW`` -> (height, width), positive integers."""
    parts = text.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) <= 0:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW, positive integers, got {text!r}")
    return (sizes[0], sizes[-1])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.errors import BuildError, ConfigError, DataError
    from kmask.export import export_onnx, export_saved_model, export_tflite
    from kmask.export.onnx_exporter import require_custom_op
    from kmask.export.output_paths import check_output_file
    from kmask.export.saved_model_exporter import version_directory
    from kmask.export.tflite_exporter import PRECISIONS as TFLITE_PRECISIONS
    from kmask.export.tflite_exporter import model_ops

    limits = {"max_batch_size": args.max_batch_size, "max_image_pixels": args.max_image_pixels}
    numbers = {"version": args.version, **limits}
    for name, value in numbers.items():
        if value is not None and value <= 0:
            return fail("export", f"--{name.replace('_', '-')} must be a positive integer", 2)
    single_file = args.format in ("onnx", "tflite")
    if single_file and (args.full_masks or any(v is not None for v in numbers.values())):
        return fail(
            "export",
            "--version, --full-masks, --max-batch-size and --max-image-pixels apply to "
            "--format saved_model",
            2,
        )
    if args.input_size is not None and args.format != "tflite":
        return fail("export", "--input-size applies to --format tflite", 2)
    if args.format == "tflite" and args.precision not in TFLITE_PRECISIONS:
        return fail(
            "export",
            f"--precision {args.precision} does not apply to --format tflite: choose one of "
            f"{', '.join(TFLITE_PRECISIONS)}",
            2,
        )
    if args.format != "tflite" and args.precision in TFLITE_ONLY:
        return fail("export", f"--precision {args.precision} applies to --format tflite", 2)
    if args.format == "onnx" and args.precision != "float32":
        return fail(
            "export",
            f"--precision {args.precision} applies to --format saved_model: ONNX is exported "
            "in float32 (ONNX Runtime's CPU provider has no bfloat16 Conv, MatMul or Relu "
            "kernels: 'Could not find an implementation for Conv(22)' in onnxruntime 1.32)",
            2,
        )
    out = Path(args.out)
    suffix = f".{args.format}"
    if single_file and out.suffix != suffix:
        out = out / f"model{suffix}"
    try:  # the output path, before the model is loaded and converted
        if single_file:
            check_output_file(out, args.overwrite, suffix)
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
        # TFLite: a float32 model; the converter stores the weights at --precision.
        tflite = args.format == "tflite"
        model = source.load_model("float32" if tflite else inference_precision(args))
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        return fail("export", str(error), 2)
    try:
        if args.format == "onnx":
            path = export_onnx(model, out, config.data, categories, overwrite=args.overwrite)
        elif tflite:
            path = export_tflite(
                model,
                out,
                config.data,
                categories,
                input_size=args.input_size,
                precision=args.precision,
                overwrite=args.overwrite,
            )
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
    if tflite:
        ops = model_ops(path.read_bytes())
        print(f"LiteRT builtin ops ({len(ops)}): {' '.join(ops)}")
    return 0
