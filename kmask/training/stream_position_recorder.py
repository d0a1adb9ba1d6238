"""``StreamPositionRecorder``: where in the training stream the last trained batch ended."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from kmask.data.pipeline import POSITION_KEY
from kmask.data.stream_position import StreamPosition


class StreamPositionRecorder:
    """Keeps, in a variable the train step updates, the stream position after the last
    global batch trained on: what each checkpoint saves so that a resumed run reads the
    stream from there (``Trainer``).

    Example::

        position = StreamPositionRecorder(start, strategy)
        model.train_step = position.recording(model.train_step)
        model.fit(...)
        position.value()  # a StreamPosition

    Args:
      start: the position before the first batch.
      strategy: the ``tf.distribute`` strategy the model trains under (the variable is
        created in its scope, kept by the first replica).
    """

    def __init__(self, start: StreamPosition, strategy: tf.distribute.Strategy) -> None:
        with strategy.scope():
            self.variable = tf.Variable(
                start.key,
                dtype=tf.int64,
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

    def recording(
        self, train_step: Callable[[Any], dict[str, tf.Tensor]]
    ) -> Callable[[Any], dict[str, tf.Tensor]]:
        """``train_step`` that also stores the stream position after its global batch: one
        past the largest ``POSITION_KEY`` of the targets over all replicas (each replica
        holds a slice of the batch, in stream order)."""

        def step(data: Any) -> dict[str, tf.Tensor]:
            _, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
            last = tf.reduce_max(targets[POSITION_KEY])
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                last = tf.reduce_max(context.all_gather(last[tf.newaxis], axis=0))
            self.variable.assign(last + 1)
            return train_step(data)

        return step

    def value(self) -> StreamPosition:
        """The position after the last batch trained on (``start`` before any)."""
        return StreamPosition.from_key(int(self.variable.numpy()))
