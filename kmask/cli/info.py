"""``kmask info``: versions, which RoIAlign implementation 'auto' picks and why, and which
inference precision --precision auto picks and why."""

from __future__ import annotations

import argparse

from kmask.cli.arguments import add_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--no-build", "report only; do not try to build the custom op")


def run(args: argparse.Namespace) -> int:
    import platform

    import keras
    import tensorflow as tf

    from kmask.modeling.inference_precision import InferencePrecision
    from kmask.native import custom_ops

    print(f"kmask       {version()}")
    print(f"Python      {platform.python_version()}")
    print(f"TensorFlow  {tf.__version__} (built with CUDA: {tf.test.is_built_with_cuda()})")
    print(f"Keras       {keras.__version__}")
    status = custom_ops.status(build=not args.no_build)
    print(f"RoIAlign    auto -> {status.auto_choice}: {status.reason}")
    if status.fix:
        print(f"  fix: {status.fix}")
    print(f"  custom op library: {status.library or 'none'}")
    print(f"  CPU build: {status.cpu_build}")
    print(f"  CUDA: kernels {'built' if status.cuda_built else 'not built'}; {status.cuda_reason}")
    print(f"  GPUs visible: {len(tf.config.list_physical_devices('GPU'))}")
    precision = InferencePrecision.auto()
    print(f"Precision   auto -> {precision.name}: {precision.reason}")
    return 0


def version() -> str:
    """The installed kmask's version, or "source checkout"."""
    from importlib import metadata

    try:
        return metadata.version("kmask")
    except metadata.PackageNotFoundError:
        return "source checkout"
