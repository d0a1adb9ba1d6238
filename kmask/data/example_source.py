"""What ``COCODataset`` and ``ShardDataset`` share: categories, and the pipelines built on
their decoded examples."""

from __future__ import annotations

import abc
import functools
from typing import Any

import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import pipeline
from kmask.data.category_map import CategoryMap
from kmask.data.stream_position import STREAM_START, StreamPosition


class ExampleSource(abc.ABC):
    """A dataset read as decoded examples (``kmask.data.transforms``), and its batches.

    A subclass sets ``categories`` and implements ``examples`` (one epoch) and
    ``pass_examples`` (one pass of the training stream, from any item); both take
    ``drop_empty`` and the keyword options that ``reader_options`` reads from the config.
    ``build`` and ``training_stream`` turn them into the ``(features, targets)`` batches
    described in ``kmask.data``.
    """

    categories: CategoryMap

    @property
    def category_ids(self) -> tuple[int, ...]:
        """Original category id of each class (``category_ids[k]`` for class ``k``)."""
        return self.categories.category_ids

    @property
    def category_names(self) -> tuple[str, ...]:
        """Name of each class."""
        return self.categories.category_names

    @property
    def num_classes(self) -> int:
        """Number of foreground classes."""
        return self.categories.num_classes

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        """Keypoint names; empty when the dataset has no keypoints."""
        return self.categories.keypoint_names

    @abc.abstractmethod
    def examples(
        self, *, shuffle: bool = False, seed: int | None = None, drop_empty: bool = False, **options
    ) -> tf.data.Dataset:
        """Decoded examples of one epoch, shuffled by ``seed`` when ``shuffle``."""

    @abc.abstractmethod
    def pass_examples(
        self, order_seed: tf.Tensor, first: tf.Tensor, *, drop_empty: bool = False, **options
    ) -> tf.data.Dataset:
        """Decoded examples of one pass of ``pipeline.training_stream``, from item ``first``
        (int64 ``[]``), in the order given by ``order_seed`` (int64 ``[2]``); each has its
        item index under ``pipeline.INDEX_KEY``."""

    def reader_options(self, config: DataConfig) -> dict[str, Any]:
        """The keyword options of ``examples`` and ``pass_examples`` set by ``config``."""
        return {"num_parallel_calls": config.num_parallel_calls}

    def build(self, config: DataConfig, *, training: bool, batch_size: int) -> tf.data.Dataset:
        """The batched ``(features, targets)`` pipeline (see ``kmask.data``), one epoch."""
        examples = self.examples(
            shuffle=training,
            seed=config.seed,
            drop_empty=training and config.drop_images_without_annotations,
            **self.reader_options(config),
        )
        return pipeline.batch_examples(
            examples,
            config,
            training=training,
            batch_size=batch_size,
            flip_permutation=self.categories.flip_permutation(),
        )

    def training_stream(
        self,
        config: DataConfig,
        *,
        batch_size: int,
        start: StreamPosition = STREAM_START,
    ) -> tf.data.Dataset:
        """The endless training batches from ``start`` (``pipeline.training_stream``):
        passes ordered by ``config.seed`` (which must be set) and the pass number."""
        return pipeline.training_stream(
            functools.partial(
                self.pass_examples,
                drop_empty=config.drop_images_without_annotations,
                **self.reader_options(config),
            ),
            config,
            batch_size=batch_size,
            start=start,
            flip_permutation=self.categories.flip_permutation(),
        )
