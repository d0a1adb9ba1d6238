"""``Trainer``: a whole training run into a run directory (what ``kmask train`` does)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from kmask.config import Config, ConfigError
from kmask.data.builder import open_dataset
from kmask.data.category_map import CategoryMap
from kmask.data.stream_position import STREAM_START, StreamPosition
from kmask.errors import DataError
from kmask.evaluation.coco_evaluator import COCOEvaluator, evaluation_batches, oks_sigmas
from kmask.evaluation.predictor import Predictor
from kmask.modeling import inference_precision
from kmask.modeling.factory import build_mask_rcnn
from kmask.modeling.mask_rcnn import MaskRCNN
from kmask.runs.checkpoints import read_checkpoint_state, restore_checkpoint
from kmask.runs.run_directory import RunDirectory
from kmask.training.batch_counter import BatchCounter
from kmask.training.checkpoint_callback import CheckpointCallback
from kmask.training.determinism import Determinism
from kmask.training.epoch_plan import epoch_plan
from kmask.training.evaluation_callback import EvaluationCallback
from kmask.training.non_finite_guard import NonFiniteGuard
from kmask.training.optimizer import build_optimizer, optimizer_step
from kmask.training.strategy import is_chief
from kmask.training.stream_position_recorder import StreamPositionRecorder
from kmask.training.tensorboard_callback import TensorBoardCallback
from kmask.training.trainable_phase_callback import TrainablePhaseCallback
from kmask.training.trainable_preset import TrainablePreset
from kmask.training.weight_transfer import WeightTransfer


class Trainer:
    """Trains a Mask R-CNN as the configuration says, into a run directory.

    ``train()`` builds the model and the papers' optimizer inside the strategy's scope,
    restores the latest checkpoint when resuming, and runs ``model.fit`` on the repeated
    training pipeline with, in this order: ``NonFiniteGuard``, ``EvaluationCallback``
    (when ``train.eval_every_epochs`` and ``eval.json_path`` are set),
    ``TensorBoardCallback`` and ``CheckpointCallback``. See ``RunDirectory`` for what the
    directory holds.

    Fine-tuning: a new run (no checkpoint) with ``train.init_from`` starts from another
    kmask model's weights (``WeightTransfer``: by name, class-dependent layers
    re-initialized when the class count differs); ``model.backbone.freeze_at`` (or its
    alias ``train.trainable``, a ``TrainablePreset`` name) picks the backbone stages that
    train, conv5 of a ResNet-C4 model included, and ``train.heads_first_steps`` trains the
    heads alone first (``TrainablePhaseCallback``).

    Exact resume: training is a pure function of the configuration and the data. The
    input is the source's endless ``training_stream`` (``kmask.data.pipeline``): passes
    over the data in an order fixed by ``data.seed`` (or ``train.seed``) and the pass
    number, each image's augmentation and the model's anchor and RoI sampling stateless
    functions of a seed derived from the image's position in the stream. Every checkpoint
    holds, besides the weights and the optimizer (step, momentum, loss scale), the stream
    position after the last batch trained on (``StreamPositionRecorder``). A run
    killed at any moment (SIGKILL included, during a step or a checkpoint write) and
    resumed therefore ends, on the CPU, with weights bit-identical to the uninterrupted
    run's, given the process settings of ``train.deterministic`` (``Determinism``: op
    determinism, oneDNN off, the same intra-op thread count; see docs/training.md for the
    limits).

    Args:
      config: the experiment; ``train.json_path``/``images_dir`` or
        ``train.tfrecord_pattern`` must name the training data, ``model.num_classes``
        must equal its number of categories.
      run_dir: the output directory.
      strategy: a ``tf.distribute`` strategy (``kmask.training.strategy``); default the
        current one.
      verbose: Keras ``fit`` verbosity (1 = progress bar, 2 = one line per epoch, 0 =
        silent).
      callbacks: more Keras callbacks, run after the standard ones.

    Raises (from ``train``):
      ConfigError: missing training data, class or keypoint count mismatch, keypoints
        to evaluate without OKS sigmas (``oks_sigmas``), batch not divisible by the
        replicas.
      FileExistsError: ``run_dir`` already has checkpoints and ``resume`` is False.
      FileNotFoundError: ``resume`` and no checkpoint of the run can be loaded, or
        ``train.init_from`` does not exist.
      WeightTransferError: ``train.init_from`` cannot initialize the model (a layer other
        than a class-dependent one has another shape: named with both shapes).
      RunLockedError: another process is training into ``run_dir``.
      DataError: bad input under ``data.strict``, or too little readable data for a
        batch.
      NonFiniteLossError: a loss became NaN/inf; the last good checkpoint is kept.
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | os.PathLike[str],
        strategy: tf.distribute.Strategy | None = None,
        verbose: int | str = "auto",
        callbacks: Sequence[keras.callbacks.Callback] = (),
    ) -> None:
        self.config = config
        self.run = RunDirectory(run_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.verbose = verbose
        self.extra_callbacks = tuple(callbacks)
        self.is_chief = is_chief(self.strategy)
        self.model: MaskRCNN | None = None
        self.history: dict[str, list[float]] = {}
        self._source: Any = None

    # ------------------------------------------------------------------ pieces

    @property
    def source(self) -> Any:
        """The training data (``CocoDataset`` or ``ShardDataset``), opened once."""
        if self._source is None:
            self._source = self._open_training_source()
        return self._source

    def _open_training_source(self) -> Any:
        train = self.config.train
        if train.tfrecord_pattern:
            return open_dataset(
                tfrecord_pattern=train.tfrecord_pattern, strict=self.config.data.strict
            )
        if not (train.json_path and train.images_dir):
            raise ConfigError(
                "no training data: set train.json_path and train.images_dir (kmask train "
                "--train-json FILE --train-images DIR) or train.tfrecord_pattern"
            )
        return open_dataset(
            json_path=train.json_path,
            images_dir=train.images_dir,
            strict=self.config.data.strict,
            allow_outside_images=self.config.data.allow_outside_images,
        )

    def _check_categories(self, categories: CategoryMap, resume: bool) -> None:
        if categories.num_classes != self.config.model.num_classes:
            raise ConfigError(
                f"model.num_classes is {self.config.model.num_classes} but the training data "
                f"has {categories.num_classes} categories {list(categories.category_names)}; "
                f"set model.num_classes={categories.num_classes}"
            )
        head = self.config.model.keypoint_head
        if head is not None and categories.num_keypoints != head.num_keypoints:
            raise ConfigError(
                f"model.keypoint_head.num_keypoints is {head.num_keypoints} but the training "
                f"data ({categories.source}) has {categories.num_keypoints} keypoints "
                f"{list(categories.keypoint_names)}; set model.keypoint_head.num_keypoints to "
                "that number (model.keypoint_head: null for data without keypoints)"
            )
        if head is not None and (self.config.eval.json_path or self.config.train.eval_every_epochs):
            oks_sigmas(categories, self.config.eval.keypoint_oks_sigmas)  # evaluable keypoints
        if resume:
            self.run.check_categories(categories)

    def _global_batch_size(self) -> int:
        batch = self.config.train.batch_size
        replicas = self.strategy.num_replicas_in_sync
        if batch % replicas:
            raise ConfigError(
                f"train.batch_size={batch} is not divisible by the {replicas} replicas of "
                f"the {type(self.strategy).__name__}"
            )
        return batch

    def build_model(self, global_batch_size: int) -> MaskRCNN:
        """The compiled model (weights and optimizer variables created) in the strategy's
        scope, under the configured dtype policy."""
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self.config.train.mixed_precision)
        try:
            with self.strategy.scope():
                model = build_mask_rcnn(self.config.model)
                model.build({"images": (None, None, None, 3)})
                model.compile(optimizer=build_optimizer(self.config.train, global_batch_size))
                model.optimizer.build(model.trainable_variables)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        return model

    def dataset(self, start: StreamPosition = STREAM_START) -> tf.data.Dataset:
        """The endless training stream ``fit`` gets, from the position ``start``.

        Batches of ``train.batch_size`` (global) images of the source's
        ``training_stream`` seeded with ``data.seed`` (or ``train.seed``), with the DATA
        auto-shard policy: every worker reads the whole stream and keeps its share of each
        global batch, which is right for JSON sources and any number of TFRecord files.
        """
        seed = self.config.data.seed
        if seed is None:
            seed = self.config.train.seed
        dataset = self.source.training_stream(
            dataclasses.replace(self.config.data, seed=seed),
            batch_size=self._global_batch_size(),
            start=start,
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return dataset.with_options(options)

    def _callbacks(
        self, model: MaskRCNN, categories: CategoryMap, checkpoints: CheckpointCallback
    ) -> list[keras.callbacks.Callback]:
        config = self.config
        callbacks: list[keras.callbacks.Callback] = [NonFiniteGuard()]
        if config.train.heads_first_steps:
            callbacks.append(
                TrainablePhaseCallback(
                    TrainablePreset("heads"),
                    TrainablePreset.freezing(config.model.backbone.freeze_at),
                    config.train.heads_first_steps,
                )
            )
        predictor = Predictor(model, config.data, config.eval.mask_threshold)
        visualization = None
        if config.eval.json_path and config.eval.images_dir:
            validation = open_dataset(
                json_path=config.eval.json_path,
                images_dir=config.eval.images_dir,
                strict=config.data.strict,
                allow_outside_images=config.data.allow_outside_images,
            )
            batches, _, total = evaluation_batches(
                validation, config.data, config.eval.batch_size, config.eval.max_images
            )
            if config.train.eval_every_epochs:
                callbacks.append(
                    EvaluationCallback(
                        COCOEvaluator(
                            config.eval.json_path,
                            categories,
                            keypoint_sigmas=config.eval.keypoint_oks_sigmas,
                        ),
                        batches,
                        config.data,
                        config.train.eval_every_epochs,
                        total_batches=total,
                        mask_threshold=config.eval.mask_threshold,
                        is_chief=self.is_chief,
                    )
                )
            if config.train.num_visualizations:
                images = validation.build(
                    config.data, training=False, batch_size=config.train.num_visualizations
                )
                visualization = next(iter(images))[0]
        callbacks.append(
            TensorBoardCallback(
                self.run.logs_dir,
                config.train.log_every,
                schedule=_schedule_of(model.optimizer),
                visualization_batch=visualization,
                predictor=predictor,
                class_names=categories.category_names,
                keypoint_skeleton=categories.keypoint_skeleton,
                score_threshold=config.eval.visualization_score_threshold,
                is_chief=self.is_chief,
            )
        )
        callbacks.append(checkpoints)
        return callbacks

    # ------------------------------------------------------------------ the run

    def train(self, resume: bool = False) -> dict[str, list[float]]:
        """Trains to ``train.max_steps`` and returns the merged ``fit`` history.

        The chief holds the run directory's lock (``RunDirectory.lock``) throughout, and
        writes ``config.yaml`` and ``categories.json`` only once the model is built and,
        when resuming, its checkpoint restored, so a failed start leaves the run as it was.

        Args:
          resume: continue from the latest checkpoint of the run directory (from scratch
            when there is none); without it a run directory with checkpoints is refused.

        With ``train.deterministic`` it runs inside ``Determinism``: op determinism on for
        its duration, and ``ConfigError`` before anything else when TensorFlow was
        imported with oneDNN on.
        """
        lock = self.run.lock() if self.is_chief else contextlib.nullcontext()
        with Determinism(self.config.train.deterministic), lock:
            return self._train(resume)

    def _train(self, resume: bool) -> dict[str, list[float]]:
        config = self.config
        latest = self.run.latest_checkpoint()
        if latest is not None and not resume:
            raise FileExistsError(
                f"{self.run.path} already holds checkpoints (latest {latest.name}); pass "
                f"--resume to continue that run or choose another --out"
            )
        categories = self.source.categories
        self._check_categories(categories, resume)
        if config.train.init_class_map is not None and not config.train.init_from:
            raise ConfigError("train.init_class_map needs train.init_from (the source model)")
        global_batch_size = self._global_batch_size()

        keras.utils.set_random_seed(config.train.seed)
        try:
            model = self.build_model(global_batch_size)
        except ValueError as error:  # an argument the model's layers refuse
            raise ConfigError(f"model: {error}") from None
        self.model = model
        step, start = 0, STREAM_START
        if resume and latest is not None:
            step, start = self._restore(model, latest)
        elif resume:
            print(f"no checkpoint in {self.run.checkpoints_dir}; starting from step 0", flush=True)
        if latest is None and config.train.init_from:
            self._initialize_from(model, config.train.init_from, categories)
        if self.is_chief:
            self.run.write_config(config)
            self.run.write_categories(categories)
        if step >= config.train.max_steps:
            print(f"already trained to step {step} (train.max_steps={config.train.max_steps})")
            return self.history

        position = StreamPositionRecorder(start, self.strategy)
        model.train_step = position.recording(model.train_step)
        # Saved at the end of the whole run, not at the end of each fit call.
        checkpoints = CheckpointCallback(
            self.run.checkpoints_dir,
            config.train.checkpoint_every_steps,
            keep=config.train.keep_checkpoints,
            save_on_train_end=False,
            is_chief=self.is_chief,
            state=lambda: {
                "stream_position": position.value().to_dict(),
                "intra_op_threads": Determinism.intra_op_threads(),
            },
        )
        counter = BatchCounter()
        callbacks = [
            counter,
            *self._callbacks(model, categories, checkpoints),
            *self.extra_callbacks,
        ]
        plan = epoch_plan(step, config.train.max_steps, config.train.steps_per_epoch)
        if self.verbose != 0:
            print(
                f"training steps {step + 1}..{config.train.max_steps}; the first step traces "
                "the model (a minute or so on a CPU) before anything else is printed",
                flush=True,
            )
        slow_bfloat16 = not (
            inference_precision.onednn_enabled() or tf.config.list_physical_devices("GPU")
        )
        if config.train.mixed_precision == "mixed_bfloat16" and slow_bfloat16:
            print(
                "note: mixed_bfloat16 with oneDNN off (train.deterministic sets "
                "TF_ENABLE_ONEDNN_OPTS=0): TensorFlow's CPU bfloat16 kernels are then slower "
                "than float32; train.deterministic=false keeps oneDNN (AMX) on",
                flush=True,
            )
        with self._fit_scope(model):
            for initial_epoch, epochs, steps in plan:
                if self.verbose != 0 and epochs == 1:  # Keras heads only a fit of epochs > 1
                    print(f"Epoch 1/{plan[-1][1]}", flush=True)
                counter.batches = 0
                try:
                    history = model.fit(
                        self.dataset(position.value()),
                        initial_epoch=initial_epoch,
                        epochs=epochs,
                        steps_per_epoch=steps,
                        callbacks=callbacks,
                        verbose=self.verbose,
                        shuffle=False,  # the pipeline shuffles
                    )
                except tf.errors.OpError:
                    # A strict reader's DataError reaches fit inside a TensorFlow error.
                    error = getattr(getattr(self.source, "report", None), "error", None)
                    if error is not None:
                        raise error from None
                    raise
                for key, values in history.history.items():
                    self.history.setdefault(key, []).extend(float(v) for v in values)
                self._check_progress(counter.batches, (epochs - initial_epoch) * steps)
        checkpoints.save(optimizer_step(model))
        return self.history

    def _restore(self, model: MaskRCNN, latest: Path) -> tuple[int, StreamPosition]:
        """Loads the newest intact checkpoint, ``latest`` first (``restore_checkpoint``:
        damaged ones are skipped with a warning); returns its step and the stream position
        it saved.

        One without a stream position (written before kmask saved it) resumes the stream
        from its start, with a warning that the run will not match an uninterrupted one.

        Raises:
          FileNotFoundError: no checkpoint of the run could be loaded.
        """

        def read_state(path: Path) -> tuple[dict[str, Any] | None, StreamPosition]:
            state = read_checkpoint_state(path)
            if state is None:
                return None, STREAM_START
            return state, StreamPosition.from_dict(state.get("stream_position"))

        path, step, (state, start) = restore_checkpoint(
            model, self.run.checkpoints_dir, latest, read_state
        )
        if state is None:
            print(
                f"kmask: warning: {path} holds no input stream position (an older "
                "kmask wrote it); the data restart from the beginning of the stream, so "
                "the run will not match an uninterrupted one",
                file=sys.stderr,
                flush=True,
            )
        saved, threads = (state or {}).get("intra_op_threads"), Determinism.intra_op_threads()
        if self.config.train.deterministic and saved not in (None, threads):
            print(
                f"kmask: warning: {path} was trained with {saved} intra-op threads and "
                f"this process has {threads}, which round sums differently: the run will "
                "not be bit-identical to an uninterrupted one (give it as many CPUs, or "
                f"TF_NUM_INTRAOP_THREADS={saved})",
                file=sys.stderr,
                flush=True,
            )
        print(f"resuming from {path} at step {step}", flush=True)
        return step, start

    def _initialize_from(self, model: MaskRCNN, source: str, categories: CategoryMap) -> None:
        """Copies the weights of ``source`` (``train.init_from``) into the new model by
        name (``WeightTransfer``; class by class with ``train.init_class_map``) and prints
        what was loaded, re-initialized and why."""
        transfer = WeightTransfer.from_path(source)
        class_map = self.config.train.init_class_map
        class_rows = None
        if class_map is not None:
            class_rows = transfer.class_rows(categories.category_names, class_map)
        rows = transfer.load_into(model, class_rows=class_rows)
        if self.is_chief:
            print(f"initialized from {source}:\n{WeightTransfer.format_table(rows)}", flush=True)

    def _check_progress(self, done: int, expected: int) -> None:
        """Raises ``DataError`` when a ``fit`` call ran out of data before its steps."""
        if done >= expected:
            return
        report = getattr(self.source, "report", None)
        summary = f" ({report.summary()})" if report is not None else ""
        raise DataError(
            f"the training data gave {done} of {expected} batches of "
            f"{self.config.train.batch_size} images: fewer readable images with annotations "
            f"than one batch{summary}"
        )

    def _fit_scope(self, model: MaskRCNN) -> contextlib.AbstractContextManager:
        """Where ``fit`` runs: inside the strategy's scope when it replicates.

        Keras' TensorFlow ``fit`` first pulls one batch and reduces it across replicas to
        build the model symbolically (``_maybe_symbolic_build``); that batch is then lost
        to training, and ``MultiWorkerMirroredStrategy`` cannot reduce a dict of features
        at all (keras-team/keras#20329). The model is already built here, so the trainer
        detaches the strategy the model recorded at construction (skipping that step) and
        runs ``fit`` inside the strategy's scope instead, where ``model.distribute_strategy``
        resolves to the same strategy for the train function and the dataset.

        Under ``MultiWorkerMirroredStrategy`` Keras 3 also averages each logged value with
        ``strategy.reduce("MEAN", value, axis=0)``, which fails for the scalar losses
        (tensorflow/tensorflow#72388): ``_rank_one_logs`` hands them over as ``[1]``.
        """
        if self.strategy is tf.distribute.get_strategy():
            return contextlib.nullcontext()
        model._distribute_strategy = None
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            model.train_step = _rank_one_logs(model.train_step)
        return self.strategy.scope()


def _rank_one_logs(train_step: Any) -> Any:
    """``train_step`` with every logged scalar reshaped to ``[1]`` (reduced back to a
    scalar by Keras' cross-worker mean)."""

    def step(data: Any) -> dict[str, tf.Tensor]:
        return {key: tf.reshape(value, [1]) for key, value in train_step(data).items()}

    return step


def _schedule_of(optimizer: keras.optimizers.Optimizer) -> Any:
    """The learning rate schedule of a (possibly loss-scaled) optimizer."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return getattr(inner, "learning_rate_schedule", None)
