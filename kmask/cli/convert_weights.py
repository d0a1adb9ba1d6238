"""``kmask convert-weights``: convert a torchvision (.pth) or detectron2 (.pkl) checkpoint to a
kmask run directory (config, COCO categories, weights) that predict/evaluate/export and
kmask.load_model read; ImageNet backbones become a backbone.npz."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

from kmask.cli.arguments import add_flag, add_overwrite_run_argument
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    source = parser.add_argument("--from", dest="source", required=True, help="source")
    source.choices = _Sources()  # after add_argument, which would list them at once
    parser.add_argument("--input", required=True, help="the downloaded checkpoint file")
    parser.add_argument(
        "--arch",
        help="architecture; may be left out where the checkpoint's keys and shapes name one "
        "(the detected one is printed); a given one that they contradict is refused",
    )
    parser.add_argument("--out", required=True, help="run directory to write")
    add_overwrite_run_argument(parser)
    add_flag(
        parser, "--keras-file", "also write OUT/model.keras (keras.saving.load_model opens it)"
    )


def run(args: argparse.Namespace) -> int:
    import time

    from kmask.convert import ConversionError, convert_weights

    start = time.perf_counter()
    arch = args.arch

    def detected(name: str) -> None:
        nonlocal arch
        arch = name
        print(f"detected --arch {name} from the checkpoint's keys", flush=True)

    try:
        out = convert_weights(
            args.source,
            args.input,
            args.arch,
            args.out,
            overwrite=args.overwrite,
            keras_file=args.keras_file,
            on_detected=detected,
        )
    except (ConversionError, FileExistsError, FileNotFoundError, ImportError) as error:
        return fail("convert-weights", str(error), 2)
    except OSError as error:  # writing --out: permissions, a full disk, a name too long
        return fail("convert-weights", str(error), 1)
    except KeyboardInterrupt:
        return fail("convert-weights", f"interrupted; {args.out} was not written", 130)
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(
        f"converted {args.input} ({args.source} {arch}) to {out} in "
        f"{time.perf_counter() - start:.1f} s ({size / 2**20:.1f} MiB)"
    )
    return 0


# The converters' sources and architectures are read when --from is checked or the help is
# shown, not when the parser is built: kmask.convert imports TensorFlow, which `kmask --help`
# and the other commands' usage errors need not wait for.


@functools.cache
def _architectures() -> dict[str, tuple[str, ...]]:
    """Source -> architecture names (``kmask.convert.ARCHITECTURES``)."""
    from kmask.convert import ARCHITECTURES

    return dict(ARCHITECTURES)


class _Sources(Sequence):
    """The ``--from`` choices, sorted."""

    def __getitem__(self, index: Any) -> Any:
        return sorted(_architectures())[index]

    def __len__(self) -> int:
        return len(_architectures())


class _HelpFormatter(argparse.HelpFormatter):
    """Lists every source's architectures in the help of ``--arch``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "arch":
            listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(_architectures().items()))
            return f"{action.help} ({listing})"
        return super()._get_help_string(action)
