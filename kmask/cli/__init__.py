"""The ``kmask`` command: ``kmask COMMAND --help`` describes each command.

One module per command (``info``, ``build_ops``, ``make_shapes``, ``convert_coco``,
``convert_cityscapes``, ``convert_weights``, ``configs``, ``train``, ``evaluate``, ``predict``,
``export``; the command is the module's name with dashes), each with a docstring
``"``kmask NAME``: HELP."`` (HELP is its entry in ``kmask --help``), ``add_arguments(parser)``
and ``run(args)``, which calls the library and returns the exit status; errors go through
``console.fail``; the argument groups several commands share are in ``arguments``.

The library (and TensorFlow) is imported inside ``run``, so that ``kmask --help`` and usage
errors come at once; ``main`` imports TensorFlow without its start-up log lines first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kmask.cli import (
    build_ops,
    configs,
    convert_cityscapes,
    convert_coco,
    convert_weights,
    evaluate,
    export,
    info,
    make_shapes,
    predict,
    train,
)
from kmask.cli.console import import_tensorflow_quietly

# In the order `kmask --help` lists them.
COMMANDS = (
    info,
    build_ops,
    make_shapes,
    convert_coco,
    convert_cityscapes,
    convert_weights,
    configs,
    train,
    evaluate,
    predict,
    export,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="kmask",
        description="Mask R-CNN for TensorFlow 2 / Keras 3: make data, train, evaluate, "
        "predict. `kmask COMMAND --help` describes each command.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up log lines (also KMASK_VERBOSE=1)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        name = command.__name__.rsplit(".", 1)[1].replace("_", "-")
        # "``kmask NAME``: HELP." (python -OO drops docstrings: no help then)
        summary = " ".join((command.__doc__ or "").split(": ", 1)[-1].split()).rstrip(".")
        command_parser = subparsers.add_parser(name, help=summary or None)
        command.add_arguments(command_parser)
        command_parser.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kmask`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    train.prepare_environment(argv)  # before TensorFlow is imported
    if "convert-weights" in argv:  # its --from and --arch list the converters: TensorFlow
        import_tensorflow_quietly("--verbose" in argv)
    args = build_parser().parse_args(argv)  # --help and usage errors end here
    import_tensorflow_quietly(args.verbose)
    return args.handler(args)
