"""``Config``: the whole experiment (``model``, ``data``, ``train``, ``eval``)."""

from __future__ import annotations

import dataclasses

from kmask.config.backbone_config import TRAINABLE_PRESETS
from kmask.config.data_config import DataConfig
from kmask.config.eval_config import EvalConfig
from kmask.config.model_config import ModelConfig
from kmask.config.train_config import TrainConfig
from kmask.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole experiment.

    Each section belongs to one part of the package: ``model`` to ``kmask.modeling`` (read
    only by ``kmask.modeling.factory``), ``data`` to ``kmask.data``, ``train`` and ``eval``
    to the training and evaluation loops.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def __post_init__(self) -> None:
        frozen = {5 - layers: name for name, layers in TRAINABLE_PRESETS.items() if layers}
        if self.train.heads_first_steps and self.model.backbone.freeze_at not in frozen:
            raise ConfigError(
                "train.heads_first_steps needs train.trainable (model.backbone.freeze_at) to "
                f"name what trains after the heads: {', '.join(frozen.values())} (freeze_at "
                f"{', '.join(map(str, frozen))}), got freeze_at {self.model.backbone.freeze_at}"
            )
        sigmas, head = self.eval.keypoint_oks_sigmas, self.model.keypoint_head
        if sigmas is not None and head is not None and len(sigmas) != head.num_keypoints:
            raise ConfigError(
                f"eval.keypoint_oks_sigmas: {len(sigmas)} sigmas but model.keypoint_head."
                f"num_keypoints is {head.num_keypoints} (one sigma per keypoint)"
            )
