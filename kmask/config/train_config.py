"""``TrainConfig``: training data, schedule, checkpoints and logs (``train``)."""

from __future__ import annotations

import dataclasses
import math

from kmask.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training data, optimization schedule, checkpoints and logs (``kmask.training``).

    Papers' schedule: 16 images per batch, SGD momentum 0.9, weight decay 1e-4, lr 0.02,
    90k iterations with x0.1 steps at 60k and 80k, linear warmup.
    """

    # Training data: a COCO JSON + the folder its file_name entries are relative to, or
    # TFRecord shards of ``kmask convert-coco`` (categories.json beside them). Relative
    # paths are relative to the working directory; ``kmask train`` flags override them.
    json_path: str | None = None
    images_dir: str | None = None
    tfrecord_pattern: str | None = None
    # Global batch (all replicas together); each replica gets batch_size / replicas.
    batch_size: int = 16
    # Learning rate at reference_batch_size images per batch; the run uses
    # base_learning_rate * batch_size / reference_batch_size (linear scaling rule, Goyal et
    # al. 2017). Step counts are not rescaled.
    base_learning_rate: float = 0.02
    reference_batch_size: int = 16
    momentum: float = 0.9
    # L2 penalty added to the gradient (Caffe / PyTorch semantics), not on biases or
    # normalization parameters.
    weight_decay: float = 1e-4
    max_steps: int = 90_000
    # Steps at which the learning rate is multiplied by lr_decay_factor.
    lr_steps: tuple[int, ...] = (60_000, 80_000)
    lr_decay_factor: float = 0.1
    # Linear warmup from warmup_factor * lr to lr over the first warmup_steps steps.
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    # Clip the global gradient norm (over all replicas) to this value; None = no clipping.
    grad_clip_norm: float | None = None
    # Keras dtype policy: "float32", "mixed_float16" (GPU, with loss scaling) or
    # "mixed_bfloat16" (TPU / recent CPUs and GPUs). Boxes and losses stay float32.
    mixed_precision: str = "float32"
    # Length of a Keras epoch in steps: progress bars, epoch logs and eval_every_epochs.
    steps_per_epoch: int = 1000
    # Checkpoints (run_dir/checkpoints): every N steps and at the end; the last
    # keep_checkpoints are kept.
    checkpoint_every_steps: int = 5000
    keep_checkpoints: int = 3
    # TensorBoard (run_dir/logs): losses and learning rate every log_every steps.
    log_every: int = 20
    # COCO evaluation on the validation set (eval.json_path) every N epochs; 0 = never
    # during training.
    eval_every_epochs: int = 0
    # Validation images drawn with their predicted masks into TensorBoard each epoch.
    num_visualizations: int = 4
    # Seeds weights, sampling and (unless data.seed is set) the input order.
    seed: int = 0
    # Fine-tuning (kmask.training.WeightTransfer, ``kmask train --init-from``): start from
    # a trained or converted kmask model, a run directory, a checkpoint inside one or a
    # .keras file. Weights are copied by name; the class-dependent layers are
    # re-initialized when the class count differs. Not used when resuming a checkpoint.
    init_from: str | None = None
    # With init_from: {class of this run: class of the source}, by name (the training
    # data's categories; the source run directory's categories.json). The per-class units
    # of the class-dependent layers (box_head cls_score and bbox_pred, mask_head predictor;
    # the background's too) are copied from the named source class, whatever the class
    # counts; classes left out keep their fresh initialization. The Mask R-CNN paper's
    # Cityscapes model from COCO: {person: person, car: car, ...}, rider new
    # (configs/mask_rcnn_r50_fpn_cityscapes_from_coco.yaml). null = those layers are copied
    # whole when their shapes match, else re-initialized.
    init_class_map: dict[str, str] | None = None
    # Two phases in one run: only the heads (the whole backbone frozen) for the first N
    # steps, then as model.backbone.freeze_at says (train.trainable, its alias, names it by
    # preset); 0 = one phase. Config checks that something trains after the heads.
    heads_first_steps: int = 0
    # Bit-identical training (kmask.training.Determinism): two runs of the configuration on
    # one machine end with the same weights, and so does a run killed at any moment and
    # resumed. On by default because every configuration promises exact resume
    # (docs/training.md): TensorFlow's op determinism for the run, oneDNN off (kmask train
    # sets TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow; the Trainer refuses to
    # start with oneDNN on) and, with GPUs visible, RoIAlign "auto" takes the pure
    # TensorFlow implementation (the custom op's CUDA gradient uses atomics). false trades
    # that for speed, e.g. on GPUs or an Intel CPU.
    deterministic: bool = True

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "reference_batch_size",
            "max_steps",
            "steps_per_epoch",
            "checkpoint_every_steps",
            "keep_checkpoints",
            "log_every",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}: expected a positive integer")
        if self.init_class_map is not None and not all(
            name and source for name, source in self.init_class_map.items()
        ):
            raise ConfigError("train.init_class_map: expected non-empty class names")
        for name in (
            "warmup_steps",
            "eval_every_epochs",
            "num_visualizations",
            "heads_first_steps",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: expected an integer >= 0")
        if self.seed < 0:
            raise ConfigError(f"train.seed: expected an integer >= 0, got {self.seed}")
        if not isinstance(self.deterministic, bool):
            raise ConfigError(
                f"train.deterministic: expected true or false, got {self.deterministic!r}"
            )
        for name in ("base_learning_rate", "momentum", "weight_decay", "lr_decay_factor"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"train.{name}: expected a finite number")
        if self.base_learning_rate <= 0:
            raise ConfigError("train.base_learning_rate: expected a positive number")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"train.momentum: expected a value in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay: expected a number >= 0")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            raise ConfigError(
                f"train.lr_steps: expected increasing positive steps, got {self.lr_steps!r}"
            )
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError("train.grad_clip_norm: expected a positive number or null")
        if self.mixed_precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(
                "train.mixed_precision: expected float32, mixed_float16 or mixed_bfloat16, "
                f"got {self.mixed_precision!r}"
            )
