"""Tiny shapes data and a tiny Mask R-CNN configuration for the training tests."""

from __future__ import annotations

from pathlib import Path

from kmask.config import Config, load_config
from kmask.data import ShapesDataset

IMAGE_SIZE = 64


def make_shapes(root: Path, num_train: int = 4, num_val: int = 2, seed: int = 0) -> Path:
    """Writes a tiny shapes dataset (64 px) under ``root``; returns ``root``."""
    ShapesDataset(IMAGE_SIZE, seed=seed, max_shapes=3).write(root, num_train, num_val)
    return root


def tiny_overrides(shapes: Path) -> list[str]:
    """``key=value`` overrides: 64 px images, narrow heads, few proposals and RoIs."""
    return [
        "model.num_classes=3",
        "model.backbone.norm=gn",
        "model.backbone.freeze_at=0",
        "model.fpn.num_channels=32",
        "model.rpn.pre_nms_topk_train=200",
        "model.rpn.post_nms_topk_train=64",
        "model.rpn.pre_nms_topk_test=200",
        "model.rpn.post_nms_topk_test=64",
        "model.rpn.batch_size_per_image=64",
        "model.roi_heads.batch_size_per_image=32",
        "model.box_head.detections_per_image=20",
        "model.box_head.fc_dim=64",
        "model.mask_head.conv_dim=16",
        "model.mask_head.num_conv=1",
        f"data.min_size=[{IMAGE_SIZE}]",
        f"data.max_size={IMAGE_SIZE}",
        "data.max_instances=4",
        f"train.json_path={shapes / 'train.json'}",
        f"train.images_dir={shapes}",
        f"eval.json_path={shapes / 'val.json'}",
        f"eval.images_dir={shapes}",
        "train.batch_size=2",
        "train.base_learning_rate=0.01",
        "train.reference_batch_size=2",
        "train.warmup_steps=2",
        "train.lr_steps=[4]",
        "train.max_steps=6",
        "train.steps_per_epoch=3",
        "train.checkpoint_every_steps=2",
        "train.log_every=1",
        "train.num_visualizations=1",
    ]


def tiny_config(shapes: Path, *more: str) -> Config:
    """The tiny configuration with ``more`` overrides applied last."""
    return load_config(None, [*tiny_overrides(shapes), *more])
