"""``build_dataset`` / ``open_dataset``: the entry points the training and evaluation use."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from kmask.config import DataConfig
from kmask.data.category_map import CategoryMap
from kmask.data.coco_dataset import COCODataset
from kmask.data.shard_dataset import ShardDataset


def open_dataset(
    *,
    json_path: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    tfrecord_pattern: str | Sequence[str] | None = None,
    categories: CategoryMap | Sequence[Mapping[str, Any]] | str | os.PathLike[str] | None = None,
    strict: bool = False,
    allow_outside_images: bool = False,
) -> COCODataset | ShardDataset:
    """The dataset object of a COCO JSON + image folder, or of TFRecord shards.

    Give either ``json_path`` and ``images_dir``, or ``tfrecord_pattern`` (with
    ``categories`` when no ``categories.json`` lies beside the shards). Either is an
    ``ExampleSource``: ``category_ids``, ``category_names``, ``num_classes``,
    ``keypoint_names``, ``build(config, training=..., batch_size=...)`` and
    ``training_stream``. ``allow_outside_images`` lets a COCO
    JSON name image files outside ``images_dir`` (``COCODataset``).
    """
    if tfrecord_pattern is not None:
        if json_path is not None or images_dir is not None:
            raise ValueError("give either json_path/images_dir or tfrecord_pattern, not both")
        return ShardDataset(tfrecord_pattern, categories, strict=strict)
    if json_path is None or images_dir is None:
        raise ValueError("give json_path and images_dir, or tfrecord_pattern")
    if categories is not None:
        raise ValueError("categories applies to TFRecord shards; a COCO JSON has its own")
    return COCODataset(
        json_path, images_dir, strict=strict, allow_outside_images=allow_outside_images
    )


def build_dataset(
    config: DataConfig,
    *,
    training: bool,
    batch_size: int,
    json_path: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    tfrecord_pattern: str | Sequence[str] | None = None,
    categories: CategoryMap | Sequence[Mapping[str, Any]] | str | os.PathLike[str] | None = None,
) -> tf.data.Dataset:
    """One epoch of batched ``(features, targets)`` (format in ``kmask.data``).

    ``open_dataset(..., strict=config.strict, allow_outside_images=...).build(config,
    training=training, batch_size=batch_size)``; use ``open_dataset`` when the category
    names or ids are needed too.
    """
    dataset = open_dataset(
        json_path=json_path,
        images_dir=images_dir,
        tfrecord_pattern=tfrecord_pattern,
        categories=categories,
        strict=config.strict,
        allow_outside_images=config.allow_outside_images,
    )
    return dataset.build(config, training=training, batch_size=batch_size)
