"""``kmask train``: train Mask R-CNN with model.fit: SGD + warmup/steps, atomic checkpoints,
TensorBoard logs, optional evaluation; writes a run directory."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kmask.cli.arguments import add_flag, add_set_argument
from kmask.cli.console import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (configs/*.yaml); optional with --resume")
    add_set_argument(parser, "override a config field, e.g. --set train.max_steps=500 (repeatable)")
    parser.add_argument(
        "--out",
        required=True,
        help="run directory (config.yaml, checkpoints/, logs/, categories.json)",
    )
    parser.add_argument("--train-json", help="COCO annotation file (train.json_path)")
    parser.add_argument("--train-images", help="its image folder (train.images_dir)")
    parser.add_argument(
        "--train-tfrecords",
        help="TFRecord shards of kmask convert-coco instead (train.tfrecord_pattern)",
    )
    parser.add_argument(
        "--init-from",
        metavar="RUN_DIR|WEIGHTS_FILE",
        help="fine-tune: start from a kmask train or convert-weights run directory, a "
        "checkpoint inside one, or a .keras file (train.init_from); weights are copied by "
        "name, the class-dependent layers re-initialized when the class count differs, and a "
        "table says what was loaded",
    )
    parser.add_argument("--val-json", help="validation COCO file (eval.json_path)")
    parser.add_argument("--val-images", help="its image folder (eval.images_dir)")
    add_flag(
        parser,
        "--resume",
        "continue from the latest checkpoint in --out (exact step, optimizer state and schedule)",
    )
    parser.add_argument(
        "--strategy",
        default="auto",
        choices=("auto", "default", "mirrored", "multi_worker"),
        help="tf.distribute strategy: auto = MultiWorkerMirrored from "
        "TF_CONFIG, Mirrored over several GPUs, else one device",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=2,
        help="logical CPU devices of --strategy mirrored without GPUs (2)",
    )


def prepare_environment(argv: Sequence[str]) -> None:
    """Sets ``TF_ENABLE_ONEDNN_OPTS=0`` for ``kmask train`` when the run's configuration
    asks for determinism (``train.deterministic``; ``kmask.training.Determinism``).

    TensorFlow reads the variable when it is imported, which ``main`` does before the
    command runs, so this reads the arguments that choose the configuration itself
    (``--config``, ``--set``, and ``--out``'s ``config.yaml`` with ``--resume``) with the
    TensorFlow-free ``kmask.config``. A variable already set is left alone (the Trainer then
    refuses oneDNN, naming the fix); a configuration that cannot be read counts as the
    default, deterministic one, and the train command reports its error.
    """
    words = [word for word in argv if word != "--verbose"]
    if words[:1] != ["train"] or "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        return
    from pathlib import Path

    from kmask.config import ConfigError, load_config

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true")
    known, _ = parser.parse_known_args(words[1:])
    path = known.config
    if known.resume and known.out and (Path(known.out) / "config.yaml").is_file():
        path = Path(known.out) / "config.yaml"
    try:
        deterministic = load_config(path, known.set).train.deterministic
    except (ConfigError, OSError):
        deterministic = True
    if deterministic:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"


def run(args: argparse.Namespace) -> int:
    # The strategy first: logical devices and collectives must be set up before anything
    # else runs in TensorFlow.
    from kmask.training.strategy import select_strategy

    try:
        strategy = select_strategy(args.strategy, cpu_devices=args.cpu_devices)
    except (ValueError, RuntimeError) as error:
        return fail("train", f"--strategy {args.strategy}: {error}", 2)

    from kmask.errors import (
        CheckpointWriteError,
        ConfigError,
        DataError,
        NonFiniteLossError,
        RunLockedError,
        WeightTransferError,
    )
    from kmask.runs import RunConfigRequest, RunDirectory
    from kmask.training import Trainer
    from kmask.training.optimizer import optimizer_step

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return fail("train", f"--out {args.out} is a file, not a run directory", 2)
    run_dir = RunDirectory(args.out)
    request = RunConfigRequest(
        args.config,
        tuple(args.set),
        train_json=args.train_json,
        train_images=args.train_images,
        train_tfrecords=args.train_tfrecords,
        val_json=args.val_json,
        val_images=args.val_images,
        init_from=args.init_from,
    )
    try:
        config = request.resolve(run_dir, args.resume)
    except (ConfigError, FileNotFoundError) as error:
        return fail("train", str(error), 2)
    trainer = Trainer(
        config, run_dir.path, strategy=strategy, verbose="auto" if sys.stdout.isatty() else 2
    )
    try:
        trainer.train(resume=args.resume)
    except NonFiniteLossError as error:
        latest = run_dir.latest_checkpoint()
        kept = f"the last good checkpoint {latest} is intact" if latest else "no checkpoint"
        return fail(
            "train",
            f"{error}. Training stopped; {kept}. Lower the learning rate "
            f"or set train.grad_clip_norm",
            1,
        )
    except CheckpointWriteError as error:
        fail("train", str(error), 1)
        # HDF5 may be left broken by the failed write and crash at interpreter exit: leave
        # now, after the message (every other file was written whole, by rename).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except (
        ConfigError,
        DataError,
        FileExistsError,
        FileNotFoundError,
        RunLockedError,
        WeightTransferError,
    ) as error:
        return fail("train", str(error), 1)
    except KeyboardInterrupt:
        return fail(
            "train",
            f"interrupted; continue with --resume from "
            f"{run_dir.latest_checkpoint() or 'the start'}",
            130,
        )
    step = optimizer_step(trainer.model)
    print(f"trained to step {step}; run directory {run_dir.path}")
    return 0
