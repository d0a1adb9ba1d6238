"""The ``kmask`` command: ``kmask SUBCOMMAND --help`` describes each subcommand.

Each subcommand is a function ``_add_NAME(subparsers)`` that registers its parser and sets
``handler``; heavy imports (TensorFlow) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from kmask.config import Config
    from kmask.training import RunDirectory


def _fail(command: str, message: str, status: int = 1) -> int:
    """Prints ``kmask COMMAND: error: MESSAGE`` to stderr and returns ``status``: every
    error (and skipped input) of every subcommand is reported here and nowhere else."""
    print(f"kmask {command}: error: {message}", file=sys.stderr)
    return status


def _run_info(args: argparse.Namespace) -> int:
    import platform

    import keras
    import tensorflow as tf

    from kmask.native import custom_ops

    print(f"kmask       {_version()}")
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
    return 0


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="versions, and which RoIAlign implementation 'auto' picks and why"
    )
    parser.add_argument(
        "--no-build", action="store_true", help="report only; do not try to build the custom op"
    )
    parser.set_defaults(handler=_run_info)


def _run_build_ops(args: argparse.Namespace) -> int:
    from kmask.errors import BuildError
    from kmask.native import custom_ops

    try:
        library = custom_ops.build(force=args.force, verbose=True)
    except BuildError as error:
        if "\n" in str(error):  # the compiler's output, before the one-line summary
            print(str(error), file=sys.stderr)
        return _fail("build-ops", f"{custom_ops.first_error_line(str(error))}\nfix: {error.fix}")
    print(f"built {library}")
    return 0


def _add_build_ops(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-ops",
        help="compile the RoIAlign custom op for the installed TensorFlow (cached; also "
        "happens on first use)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.set_defaults(handler=_run_build_ops)


def _run_make_shapes(args: argparse.Namespace) -> int:
    from kmask.data.shapes_dataset import ShapesDataset
    from kmask.data.stick_figures_dataset import StickFiguresDataset

    for name in ("num_train", "num_val"):
        if getattr(args, name) < 0:
            return _fail("make-shapes", f"--{name.replace('_', '-')} must be >= 0", 2)
    if args.shapes is not None and args.keypoints:
        return _fail("make-shapes", "--shapes and --keypoints exclude each other", 2)
    try:
        if args.shapes is not None:
            shapes = ShapesDataset(args.image_size, seed=args.seed, shapes=args.shapes.split(","))
        else:
            kind = StickFiguresDataset if args.keypoints else ShapesDataset
            shapes = kind(args.image_size, seed=args.seed)
        paths = shapes.write(args.out, args.num_train, args.num_val, progress=True)
    except ValueError as error:
        flag = "--shapes" if "shapes must" in str(error) else "--image-size"
        return _fail("make-shapes", f"{flag}: {error}", 2)
    except OSError as error:
        return _fail("make-shapes", f"cannot write to {args.out}: {error}", 1)
    print(
        f"wrote {paths['train']} ({args.num_train} images) and {paths['val']} "
        f"({args.num_val} images); image paths are relative to {args.out}"
    )
    return 0


def _add_make_shapes(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shapes",
        help="write the synthetic shapes dataset (COCO JSON + PNG images of circles, "
        "squares and triangles with exact masks); deterministic for a seed",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (train.json, val.json, train/, val/)"
    )
    parser.add_argument("--num-train", type=int, default=200, help="training images (200)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images (50)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--keypoints",
        action="store_true",
        help="write stick figures instead: category person with 11 keypoints, skeleton and "
        "masks in COCO person-keypoint format (configs/keypoints_tiny.yaml)",
    )
    parser.add_argument(
        "--shapes",
        metavar="NAME,NAME,...",
        help="other classes, e.g. for fine-tuning: comma-separated names such as "
        "pentagon,hexagon,ellipse,rhombus (an unknown name is refused with the list of "
        "shapes; default circle,square,triangle)",
    )
    parser.set_defaults(handler=_run_make_shapes)


def _run_convert_coco(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.data import CocoDataset, DataError, ShardWriter

    try:
        dataset = CocoDataset(
            args.json,
            args.images,
            strict=args.strict,
            allow_outside_images=args.allow_outside_images,
        )
        writer = ShardWriter(
            args.out, num_shards=args.num_shards, prefix=args.prefix or Path(args.json).stem
        )
        paths = writer.write(dataset, progress=True)
    except (DataError, OSError) as error:
        return _fail("convert-coco", str(error), 1)
    except KeyboardInterrupt:
        return _fail("convert-coco", "interrupted; no shard was written", 130)
    print(
        f"wrote {len(paths)} shard(s) to {args.out}: {writer.images_written} images, "
        f"{writer.instances_written} instances ({paths[0].name} ...)"
    )
    print(dataset.report.summary())
    return 0


def _add_convert_coco(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-coco",
        help="convert a COCO JSON + image folder to TFRecord shards (Object Detection API "
        "/ Model Garden feature keys), in parallel and atomically",
    )
    parser.add_argument("--json", required=True, help="COCO annotation file")
    parser.add_argument(
        "--images", required=True, help="folder the file_name entries are relative to"
    )
    parser.add_argument(
        "--out", required=True, help="output folder for the shards and categories.json"
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=None,
        help="number of shards (default: one per 1000 images)",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="shard name prefix (default: the JSON file name without .json)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad image or annotation instead of skipping it",
    )
    parser.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="read file_name entries that are absolute or leave --images through '..' "
        "(skipped by default)",
    )
    parser.set_defaults(handler=_run_convert_coco)


def _run_convert_cityscapes(args: argparse.Namespace) -> int:
    from kmask.data import DataError
    from kmask.data.cityscapes_converter import CityscapesConverter

    if args.num_shards is not None and not args.shards:
        return _fail("convert-cityscapes", "--num-shards needs --shards", 2)
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
        return _fail("convert-cityscapes", str(error), 2)
    except (DataError, OSError) as error:
        return _fail("convert-cityscapes", str(error), 1)
    except KeyboardInterrupt:
        return _fail("convert-cityscapes", f"interrupted; {args.out} was not written", 130)
    print(f"wrote {len(paths)} file(s) to {args.out}: {', '.join(p.name for p in paths[:4])}")
    for split in args.splits:
        print(
            f"train or evaluate with --json {args.out}/instances_{split}.json --images "
            f"{converter.images_dir(split)}"
        )
    return 0


def _add_convert_cityscapes(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-cityscapes",
        help="convert Cityscapes gtFine instance annotations (instanceIds PNGs) to COCO JSON "
        "(instances_<split>.json, exact-pixel RLE masks, group regions as iscrowd) and, with "
        "--shards, TFRecord shards; atomically",
    )
    parser.add_argument(
        "--root", required=True, help="the Cityscapes folder with leftImg8bit/ and gtFine/"
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument(
        "--splits", nargs="+", default=["train", "val"], help="splits to convert (train val)"
    )
    parser.add_argument(
        "--shards",
        action="store_true",
        help="also write the TFRecord shards of convert-coco (instances_<split>-*.tfrecord)",
    )
    parser.add_argument(
        "--num-shards", type=int, default=None, help="shards per split (one per 1000 images)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that kmask wrote (never one holding the input, "
        "other files or a running kmask train)",
    )
    parser.set_defaults(handler=_run_convert_cityscapes)


def _run_convert_weights(args: argparse.Namespace) -> int:
    import time

    from kmask.convert import ConversionError, convert_weights

    start = time.perf_counter()
    try:
        out = convert_weights(
            args.source,
            args.input,
            args.arch,
            args.out,
            overwrite=args.overwrite,
            keras_file=args.keras_file,
        )
    except (ConversionError, FileExistsError, FileNotFoundError, ImportError) as error:
        return _fail("convert-weights", str(error), 2)
    except OSError as error:  # writing --out: permissions, a full disk, a name too long
        return _fail("convert-weights", str(error), 1)
    except KeyboardInterrupt:
        return _fail("convert-weights", f"interrupted; {args.out} was not written", 130)
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(
        f"converted {args.input} ({args.source} {args.arch}) to {out} in "
        f"{time.perf_counter() - start:.1f} s ({size / 2**20:.1f} MiB)"
    )
    return 0


def _add_convert_weights(subparsers: argparse._SubParsersAction) -> None:
    from kmask.convert import ARCHITECTURES

    parser = subparsers.add_parser(
        "convert-weights",
        help="convert a torchvision (.pth) or detectron2 (.pkl) checkpoint to a kmask run "
        "directory (config, COCO categories, weights) that predict/evaluate/export and "
        "kmask.load_model read; ImageNet backbones become a backbone.npz",
    )
    parser.add_argument(
        "--from", dest="source", required=True, choices=sorted(ARCHITECTURES), help="source"
    )
    parser.add_argument("--input", required=True, help="the downloaded checkpoint file")
    choices = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(ARCHITECTURES.items()))
    parser.add_argument("--arch", required=True, help=f"architecture ({choices})")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that kmask wrote (never one holding the input, "
        "other files or a running kmask train)",
    )
    parser.add_argument(
        "--keras-file",
        action="store_true",
        help="also write OUT/model.keras (keras.saving.load_model opens it)",
    )
    parser.set_defaults(handler=_run_convert_weights)


def _absolute(path: str | None) -> str | None:
    import os

    return None if path is None else os.path.abspath(os.path.expanduser(path))


def _with_data_paths(
    config: Config,
    train_json: str | None = None,
    train_images: str | None = None,
    train_tfrecords: str | None = None,
    val_json: str | None = None,
    val_images: str | None = None,
) -> Config:
    """The config with data flags applied and every data path made absolute."""
    import dataclasses

    train, evaluation = config.train, config.eval
    train = dataclasses.replace(
        train,
        json_path=_absolute(train_json or train.json_path),
        images_dir=_absolute(train_images or train.images_dir),
        tfrecord_pattern=_absolute(train_tfrecords or train.tfrecord_pattern),
    )
    evaluation = dataclasses.replace(
        evaluation,
        json_path=_absolute(val_json or evaluation.json_path),
        images_dir=_absolute(val_images or evaluation.images_dir),
    )
    return dataclasses.replace(config, train=train, eval=evaluation)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _train_config(args: argparse.Namespace, run: RunDirectory) -> Config:
    """The run's configuration: --config (+ --set) for a new run, the run's config.yaml
    (+ --set) when resuming; data flags override the data paths."""
    import dataclasses

    from kmask.config import ConfigError, config_to_dict, load_config

    def with_flags(config: Config) -> Config:
        config = _with_data_paths(
            config,
            args.train_json,
            args.train_images,
            args.train_tfrecords,
            args.val_json,
            args.val_images,
        )
        if args.init_from:
            train = dataclasses.replace(config.train, init_from=_absolute(args.init_from))
            config = dataclasses.replace(config, train=train)
        return config

    overrides = tuple(args.set)
    if args.resume and run.config_path.is_file():
        config = with_flags(run.load_config(overrides))
        if args.config:
            given = _flatten(config_to_dict(with_flags(load_config(args.config, overrides))))
            saved = _flatten(config_to_dict(config))
            differ = sorted(k for k in saved if saved[k] != given.get(k))
            if differ:
                raise ConfigError(
                    f"--config {args.config} differs from {run.config_path} in "
                    f"{', '.join(differ)}; a resumed run keeps its config.yaml (change "
                    f"fields such as train.max_steps with --set)"
                )
        return config
    if not args.config:
        raise ConfigError("--config is required (unless --resume finds DIR/config.yaml)")
    return with_flags(load_config(args.config, overrides))


def _train_environment(argv: Sequence[str]) -> None:
    """Sets ``TF_ENABLE_ONEDNN_OPTS=0`` for ``kmask train`` when the run's configuration
    asks for determinism (``train.deterministic``; ``kmask.training.Determinism``).

    TensorFlow reads the variable when it is imported, which ``main`` does before it parses
    the arguments, so this reads the arguments that choose the configuration itself
    (``--config``, ``--set``, and ``--out``'s ``config.yaml`` with ``--resume``) with the
    TensorFlow-free ``kmask.config``. A variable already set is left alone (the Trainer then
    refuses oneDNN, naming the fix); a configuration that cannot be read counts as the
    default, deterministic one, and the train handler reports its error.
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


def _run_train(args: argparse.Namespace) -> int:
    # The strategy first: logical devices and collectives must be set up before anything
    # else runs in TensorFlow.
    from kmask.training.strategy import select_strategy

    try:
        strategy = select_strategy(args.strategy, cpu_devices=args.cpu_devices)
    except (ValueError, RuntimeError) as error:
        return _fail("train", f"--strategy {args.strategy}: {error}", 2)

    from kmask.data import DataError
    from kmask.errors import ConfigError
    from kmask.training import (
        CheckpointWriteError,
        NonFiniteLossError,
        RunDirectory,
        RunLockedError,
        Trainer,
        WeightTransferError,
    )
    from kmask.training.optimizer import optimizer_step

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return _fail("train", f"--out {args.out} is a file, not a run directory", 2)
    run = RunDirectory(args.out)
    try:
        config = _train_config(args, run)
    except (ConfigError, FileNotFoundError) as error:
        return _fail("train", str(error), 2)
    trainer = Trainer(
        config, run.path, strategy=strategy, verbose="auto" if sys.stdout.isatty() else 2
    )
    try:
        trainer.train(resume=args.resume)
    except NonFiniteLossError as error:
        latest = run.latest_checkpoint()
        kept = f"the last good checkpoint {latest} is intact" if latest else "no checkpoint"
        return _fail(
            "train",
            f"{error}. Training stopped; {kept}. Lower the learning rate "
            f"or set train.grad_clip_norm",
            1,
        )
    except CheckpointWriteError as error:
        _fail("train", str(error), 1)
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
        return _fail("train", str(error), 1)
    except KeyboardInterrupt:
        return _fail(
            "train",
            f"interrupted; continue with --resume from {run.latest_checkpoint() or 'the start'}",
            130,
        )
    step = optimizer_step(trainer.model)
    print(f"trained to step {step}; run directory {run.path}")
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train Mask R-CNN with model.fit: SGD + warmup/steps, atomic checkpoints, "
        "TensorBoard logs, optional evaluation; writes a run directory",
    )
    parser.add_argument("--config", help="experiment YAML (configs/*.yaml); optional with --resume")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.max_steps=500 (repeatable)",
    )
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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --out (exact step, "
        "optimizer state and schedule)",
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
    parser.set_defaults(handler=_run_train)


def _inference_setup(args: argparse.Namespace) -> tuple[Config, Path, RunDirectory | None]:
    """(config, checkpoint, run directory or None) of --run / --checkpoint [--config]."""
    from pathlib import Path

    from kmask.config import ConfigError, load_config
    from kmask.training import RunDirectory

    overrides = tuple(args.set)
    if args.run:
        run = RunDirectory(args.run)
        config = load_config(args.config, overrides) if args.config else run.load_config(overrides)
        checkpoint = run.latest_checkpoint()
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint in {run.checkpoints_dir}")
        return config, checkpoint, run
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: file not found")
    run = RunDirectory.of_checkpoint(checkpoint)
    if not run.config_path.is_file():
        run = None
    if args.config:
        config = load_config(args.config, overrides)
    elif run is not None:
        config = run.load_config(overrides)
    else:
        raise ConfigError(f"--config is required: no run directory config.yaml holds {checkpoint}")
    return config, checkpoint, run


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run",
        help="run directory of kmask train (config.yaml, latest checkpoint, categories.json)",
    )
    source.add_argument(
        "--checkpoint",
        help="a checkpoint file (ckpt-*.weights.h5); its run "
        "directory's config.yaml is used unless --config is given",
    )
    parser.add_argument("--config", help="experiment YAML the checkpoint was trained with")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from kmask.data import DataError, open_dataset
    from kmask.data.image_io import output_file_problem
    from kmask.errors import ConfigError
    from kmask.evaluation import COCOEvaluator, DetectorMode, Predictor
    from kmask.evaluation.coco_evaluator import evaluation_batches
    from kmask.runs.run_directory import atomic_write_json
    from kmask.training.checkpoint_callback import checkpoint_step

    for name in ("batch_size", "max_images"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            return _fail("evaluate", f"--{name.replace('_', '-')} must be positive", 2)
    for name in ("results_out", "metrics_out"):
        problem = output_file_problem(getattr(args, name))
        if problem:
            return _fail("evaluate", f"--{name.replace('_', '-')} {problem}", 2)
    try:
        config, checkpoint, run = _inference_setup(args)
        results_out = args.results_out or (run.results_path if run is not None else None)
        metrics_out = args.metrics_out or (run.metrics_path if run is not None else None)
        for name, path in (("results_out", results_out), ("metrics_out", metrics_out)):
            problem = None if getattr(args, name) else output_file_problem(path)
            if problem:  # a default path in the run directory (a given one is checked above)
                raise ValueError(f"--{name.replace('_', '-')} {problem}")
        json_path = args.json or config.eval.json_path
        images_dir = args.images or config.eval.images_dir
        if not (json_path and images_dir):
            raise ConfigError(
                "no evaluation data: give --json FILE --images DIR (or set "
                "eval.json_path and eval.images_dir)"
            )
        categories = None
        if run is not None and run.categories_path.is_file():
            categories = run.load_categories(config.model)
        evaluator = COCOEvaluator(json_path, categories)
        if evaluator.categories.num_classes != config.model.num_classes:
            raise ConfigError(
                f"{json_path} has {evaluator.categories.num_classes} categories but the model "
                f"has model.num_classes={config.model.num_classes}"
            )
        source = open_dataset(json_path=json_path, images_dir=images_dir, strict=config.data.strict)
        batches, count, total = evaluation_batches(
            source,
            config.data,
            args.batch_size or config.eval.batch_size,
            args.max_images or config.eval.max_images,
        )
        predictor = Predictor.from_checkpoint(config, checkpoint)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        return _fail("evaluate", str(error), 2)
    print(f"evaluating {checkpoint} on {count} images of {json_path}")
    try:
        metrics = evaluator.run(predictor, batches, total=total)
    except (DataError, ValueError) as error:
        return _fail("evaluate", str(error), 1)
    failed = []  # each output is written even when another one fails
    if results_out:
        try:
            evaluator.write_results(results_out)
            what = "proposals" if evaluator.mode is DetectorMode.RPN else "COCO results"
            print(f"wrote {what} to {results_out}")
        except OSError as error:
            failed.append(f"cannot write --results-out {results_out}: {error.strerror or error}")
    if metrics_out:
        record = {**evaluator.metrics_record(metrics), "checkpoint": str(checkpoint)}
        with contextlib.suppress(ValueError):
            record["step"] = checkpoint_step(checkpoint)
        try:
            atomic_write_json(metrics_out, record)
            print(f"wrote metrics to {metrics_out}")
        except OSError as error:
            failed.append(f"cannot write --metrics-out {metrics_out}: {error.strerror or error}")
    print(evaluator.summary(metrics))
    return _fail("evaluate", "; ".join(failed), 1) if failed else 0


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="COCO box/mask AP (pycocotools) and proposal AR of a trained model; writes "
        "COCO results and flat metrics JSON",
    )
    _add_inference_arguments(parser)
    parser.add_argument("--json", help="COCO annotation file (default: eval.json_path)")
    parser.add_argument("--images", help="its image folder (default: eval.images_dir)")
    parser.add_argument(
        "--metrics-out", help="flat metrics JSON (default with --run: RUN/metrics.json)"
    )
    parser.add_argument(
        "--results-out", help="COCO results JSON (default with --run: RUN/results.json)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="eval.batch_size")
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="evaluate only the first N images (eval.max_images)",
    )
    parser.set_defaults(handler=_run_evaluate)


def _run_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.data import DataError
    from kmask.data.category_map import CategoryMap
    from kmask.errors import ConfigError
    from kmask.evaluation import PredictionWriter, Predictor

    if args.num_proposals < 0:
        return _fail("predict", "--num-proposals must be >= 0", 2)
    if args.limit is not None and args.limit <= 0:
        return _fail("predict", "--limit must be positive", 2)
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        return _fail("predict", "--score-threshold must lie in [0, 1]", 2)
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        return _fail("predict", f"--out {args.out} is a file, not a folder", 2)
    try:
        config, checkpoint, run = _inference_setup(args)
        paths = PredictionWriter.image_paths(args.images, args.limit)
        if not paths:
            raise FileNotFoundError(f"no images in {' '.join(args.images)}")
        if args.out:
            out = Path(args.out)
        elif run is not None:
            out = run.predictions_dir
        else:
            raise ConfigError("--out is required with --checkpoint")
        if run is not None and run.categories_path.is_file():
            categories = run.load_categories(config.model)
        else:
            categories = CategoryMap(
                [{"id": k + 1, "name": f"class_{k + 1}"} for k in range(config.model.num_classes)]
            )
        predictor = Predictor.from_checkpoint(config, checkpoint)
        out.mkdir(parents=True, exist_ok=True)
    except (ConfigError, DataError, FileNotFoundError, ValueError, OSError) as error:
        return _fail("predict", str(error), 2)
    threshold = (
        args.score_threshold
        if args.score_threshold is not None
        else config.eval.visualization_score_threshold
    )
    writer = PredictionWriter(
        predictor,
        categories,
        out,
        score_threshold=threshold,
        num_proposals=args.num_proposals,
        on_skip=lambda path, reason: _fail("predict", f"skipping {path}: {reason}"),
    )
    try:
        writer.write(paths)
    except (OSError, ValueError) as error:
        return _fail("predict", str(error), 1)
    print(writer.summary())
    return 1 if writer.skipped else 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="draw predicted masks, boxes, class names and scores over images (PNG) and "
        "write their detections as COCO JSON in source-image pixels",
    )
    _add_inference_arguments(parser)
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, or folders of images"
    )
    parser.add_argument("--out", help="output folder (default with --run: RUN/predictions)")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="detections below this score are left out (default "
        "eval.visualization_score_threshold, 0.5)",
    )
    parser.add_argument("--limit", type=int, default=None, help="predict only the first N images")
    parser.add_argument(
        "--num-proposals",
        type=int,
        default=20,
        help="RPN-only models: draw and write the N best proposals of each "
        "image, whatever their score (20)",
    )
    parser.set_defaults(handler=_run_predict)


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmask.data import DataError
    from kmask.errors import ConfigError
    from kmask.evaluation import Predictor
    from kmask.export import export_onnx, export_saved_model
    from kmask.export.onnx_exporter import check_output_file
    from kmask.export.saved_model_exporter import version_directory

    limits = {"max_batch_size": args.max_batch_size, "max_image_pixels": args.max_image_pixels}
    numbers = {"version": args.version, **limits}
    for name, value in numbers.items():
        if value is not None and value <= 0:
            return _fail("export", f"--{name.replace('_', '-')} must be a positive integer", 2)
    if args.format == "onnx" and (args.full_masks or any(v is not None for v in numbers.values())):
        return _fail(
            "export",
            "--version, --full-masks, --max-batch-size and --max-image-pixels apply to "
            "--format saved_model",
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
        return _fail("export", str(error), 2)
    try:
        config, checkpoint, run = _inference_setup(args)
        categories = None
        if run is not None and run.categories_path.is_file():
            categories = run.load_categories(config.model)
        model = Predictor.from_checkpoint(config, checkpoint).model
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        return _fail("export", str(error), 2)
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
        return _fail("export", f"{error}", 2)
    except (ImportError, ValueError, OSError) as error:
        return _fail("export", f"cannot export {checkpoint} to {out}: {error}", 1)
    print(f"exported {checkpoint} to {path}")
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model for TensorFlow Serving (SavedModel, stock ops only) or "
        "ONNX Runtime; decoding, resizing and the mapping back to image pixels and category "
        "ids happen inside the exported graph",
    )
    _add_inference_arguments(parser)
    parser.add_argument(
        "--out",
        required=True,
        help="saved_model: the model base path (writes OUT/<version>/); onnx: the .onnx file, "
        "or a folder for OUT/model.onnx",
    )
    parser.add_argument("--format", default="saved_model", choices=("saved_model", "onnx"))
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
    parser.add_argument(
        "--full-masks",
        action="store_true",
        help="also output masks pasted into the source image (detection_full_masks, uint8)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing version folder or file"
    )
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
    parser.set_defaults(handler=_run_export)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kmask")
    except metadata.PackageNotFoundError:
        return "source checkout"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
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
    for add in (
        _add_info,
        _add_build_ops,
        _add_make_shapes,
        _add_convert_coco,
        _add_convert_cityscapes,
        _add_convert_weights,
        _add_train,
        _add_evaluate,
        _add_predict,
        _add_export,
    ):
        add(subparsers)
    return parser


def _import_tensorflow_quietly(verbose: bool = False) -> None:
    """Imports TensorFlow without its start-up log lines (CUDA probing, CPU features).

    ``TF_CPP_MIN_LOG_LEVEL=3`` silences TensorFlow's own C++ logging; the lines that XLA
    writes through absl before logging is initialized ignore it, so stderr is pointed at
    /dev/null for the import only. An import error still raises (and prints) as usual.
    ``kmask --verbose`` or ``KMASK_VERBOSE=1`` keeps everything.
    """
    if verbose or os.environ.get("KMASK_VERBOSE"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kmask`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _train_environment(argv)  # before TensorFlow is imported
    # Building the parser lists the converters' architectures, whose modules import
    # TensorFlow: import it quietly first (--verbose is read before parsing for that).
    _import_tensorflow_quietly("--verbose" in argv)
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
