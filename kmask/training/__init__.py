"""Training: the papers' optimizer and schedule, checkpoints, logs, strategies, ``Trainer``.

The whole run, as ``kmask train`` does it::

    from kmask.config import load_config
    from kmask.training import Trainer
    config = load_config("configs/shapes_tiny.yaml")
    Trainer(config, "runs/shapes_tiny").train()

Or the pieces with plain ``model.fit``::

    model = build_mask_rcnn(config.model)
    model.compile(optimizer=build_optimizer(config.train, global_batch_size=2))
    model.fit(dataset.repeat(), steps_per_epoch=100, epochs=10,
              callbacks=[NonFiniteGuard(), CheckpointCallback("ckpts", every_steps=100)])

Modules: ``trainer.Trainer``, ``optimizer.build_optimizer``,
``coupled_weight_decay_sgd.CoupledWeightDecaySGD``,
``warmup_step_schedule.WarmupStepSchedule``, ``checkpoint_callback.CheckpointCallback``,
``non_finite_guard.NonFiniteGuard`` (``non_finite_loss_error.NonFiniteLossError``),
``evaluation_callback.EvaluationCallback``, ``tensorboard_callback.TensorBoardCallback``,
``strategy.select_strategy``, ``determinism.Determinism`` (``train.deterministic``),
``run_directory.RunDirectory``
(``run_locked_error.RunLockedError``), fine-tuning: ``weight_transfer.WeightTransfer``
(``weight_transfer_error.WeightTransferError``), ``trainable_preset.TrainablePreset``,
``trainable_phase_callback.TrainablePhaseCallback``.
"""

from kmask.errors import (
    CheckpointWriteError,
    NonFiniteLossError,
    RunLockedError,
    WeightTransferError,
)
from kmask.runs.run_directory import RunDirectory
from kmask.training.checkpoint_callback import CheckpointCallback
from kmask.training.coupled_weight_decay_sgd import CoupledWeightDecaySGD
from kmask.training.determinism import Determinism
from kmask.training.evaluation_callback import EvaluationCallback
from kmask.training.non_finite_guard import NonFiniteGuard
from kmask.training.optimizer import build_optimizer, scaled_learning_rate
from kmask.training.strategy import is_chief, select_strategy
from kmask.training.tensorboard_callback import TensorBoardCallback
from kmask.training.trainable_phase_callback import TrainablePhaseCallback
from kmask.training.trainable_preset import TrainablePreset
from kmask.training.trainer import Trainer
from kmask.training.warmup_step_schedule import WarmupStepSchedule
from kmask.training.weight_transfer import WeightTransfer

__all__ = [
    "CheckpointCallback",
    "CheckpointWriteError",
    "CoupledWeightDecaySGD",
    "Determinism",
    "EvaluationCallback",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RunDirectory",
    "RunLockedError",
    "TensorBoardCallback",
    "TrainablePhaseCallback",
    "TrainablePreset",
    "Trainer",
    "WarmupStepSchedule",
    "WeightTransfer",
    "WeightTransferError",
    "build_optimizer",
    "is_chief",
    "scaled_learning_rate",
    "select_strategy",
]
