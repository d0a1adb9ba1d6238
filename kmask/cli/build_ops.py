"""``kmask build-ops``: compile the RoIAlign custom op for the installed TensorFlow (cached;
also happens on first use)."""

from __future__ import annotations

import argparse
import sys

from kmask.cli.arguments import add_flag
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--force", "rebuild even if cached")


def run(args: argparse.Namespace) -> int:
    from kmask.errors import BuildError
    from kmask.native import custom_ops

    try:
        library = custom_ops.build(force=args.force, verbose=True)
    except BuildError as error:
        if "\n" in str(error):  # the compiler's output, before the one-line summary
            print(str(error), file=sys.stderr)
        return fail("build-ops", f"{custom_ops.first_error_line(str(error))}\nfix: {error.fix}")
    print(f"built {library}")
    return 0
