"""TFRecord shards in the TensorFlow Object Detection API / Model Garden layout."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

from kmask.config import DataConfig
from kmask.data import pipeline
from kmask.data.category_map import CategoryMap
from kmask.data.example_source import ExampleSource
from kmask.data.image_decoding import decode_image
from kmask.errors import DataError

# File beside the shards that holds the COCO ``categories`` list (written by ShardWriter).
CATEGORIES_FILE = "categories.json"


class ShardDataset(ExampleSource):
    """Reads ``tf.train.Example`` shards into decoded examples (``kmask.data.transforms``);
    ``build`` and ``training_stream`` batch them (``ExampleSource``).

    Feature keys (those of the Object Detection API and the Model Garden): ``image/encoded``
    (JPEG/PNG/...), ``image/source_id`` (the image id as a decimal string; any other string
    is hashed to an int64), ``image/object/bbox/{xmin,ymin,xmax,ymax}`` (normalized),
    ``image/object/class/label`` (the original category id; when absent,
    ``image/object/class/text`` is matched to the category names), ``image/object/is_crowd``
    (optional), ``image/object/mask`` (one PNG per instance, nonzero = inside; when absent
    each mask is its box), and for keypoint datasets ``image/object/keypoint/{x,y}``
    (normalized, COCO pixel-index convention) and ``image/object/keypoint/visibility``,
    ``K`` per instance. Numeric float-list masks are not supported.

    Crowd instances and labels that are not among the categories are left out; boxes are
    clipped to the image and empty ones dropped. A local shard whose records do not end
    where the file ends (truncated by an interrupted copy) is refused at construction with
    a ``DataError`` naming it. Records whose image cannot be decoded
    are skipped with a logged warning (``strict``: the error is raised).

    Args:
      file_pattern: glob pattern(s) of the shard files.
      categories: a ``CategoryMap``, the COCO ``categories`` list, or a path to a COCO JSON
        or a categories JSON; default: ``categories.json`` in the folder of the first shard.
      strict: raise on an undecodable record instead of skipping it.
    """

    def __init__(
        self,
        file_pattern: str | Sequence[str],
        categories: CategoryMap
        | Sequence[Mapping[str, Any]]
        | str
        | os.PathLike[str]
        | None = None,
        *,
        strict: bool = False,
    ) -> None:
        patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
        files: list[str] = []
        for pattern in patterns:
            files.extend(sorted(tf.io.gfile.glob(pattern)))
        if not files:
            raise DataError(f"no TFRecord files match {', '.join(patterns)}")
        for path in files:
            _check_framing(path)
        self.files: tuple[str, ...] = tuple(files)
        self.strict = strict
        if categories is None:
            path = Path(files[0]).parent / CATEGORIES_FILE
            if not path.is_file():
                raise DataError(
                    f"no {CATEGORIES_FILE} beside {files[0]}: pass categories= (a COCO JSON, "
                    "a categories JSON or a list of {'id', 'name'} entries)"
                )
            self.categories = CategoryMap.load(path)
        elif isinstance(categories, CategoryMap):
            self.categories = categories
        elif isinstance(categories, (str, os.PathLike)):
            self.categories = CategoryMap.load(categories)
        else:
            self.categories = CategoryMap(categories)

    def reader_options(self, config: DataConfig) -> dict[str, Any]:
        """``num_parallel_calls`` and ``shuffle_buffer`` (records held for shuffling)."""
        return {**super().reader_options(config), "shuffle_buffer": config.shuffle_buffer}

    def _feature_spec(self) -> dict[str, Any]:
        spec = {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
            "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
            "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
            "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
            "image/object/class/label": tf.io.VarLenFeature(tf.int64),
            "image/object/class/text": tf.io.VarLenFeature(tf.string),
            "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
            "image/object/mask": tf.io.VarLenFeature(tf.string),
        }
        if self.categories.num_keypoints:
            spec["image/object/keypoint/x"] = tf.io.VarLenFeature(tf.float32)
            spec["image/object/keypoint/y"] = tf.io.VarLenFeature(tf.float32)
            spec["image/object/keypoint/visibility"] = tf.io.VarLenFeature(tf.int64)
        return spec

    def _decoder(self):
        """The function serialized record -> decoded example (tables built once, here)."""
        ids_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.categories.category_ids, tf.int64),
                tf.range(self.categories.num_classes, dtype=tf.int32),
            ),
            default_value=-1,
        )
        names_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.categories.category_names, tf.string),
                tf.range(self.categories.num_classes, dtype=tf.int32),
            ),
            default_value=-1,
        )
        spec = self._feature_spec()
        num_keypoints = self.categories.num_keypoints

        def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
            parsed = tf.io.parse_single_example(serialized, spec)
            dense = {
                key: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
                for key, value in parsed.items()
            }
            image = decode_image(dense["image/encoded"])
            height = tf.shape(image)[0]
            width = tf.shape(image)[1]
            size_yx = tf.cast(tf.stack([height, width]), tf.float32)
            boxes = tf.stack(
                [
                    dense["image/object/bbox/ymin"],
                    dense["image/object/bbox/xmin"],
                    dense["image/object/bbox/ymax"],
                    dense["image/object/bbox/xmax"],
                ],
                axis=-1,
            )
            boxes = tf.clip_by_value(boxes, 0.0, 1.0) * tf.tile(size_yx, [2])
            count = tf.shape(boxes)[0]
            labels = dense["image/object/class/label"]
            classes = tf.cond(
                tf.size(labels) == count,
                lambda: ids_table.lookup(labels),
                lambda: names_table.lookup(dense["image/object/class/text"]),
            )
            crowd_flags = dense["image/object/is_crowd"]
            is_crowd = tf.cond(
                tf.size(crowd_flags) == count,
                lambda: crowd_flags > 0,
                lambda: tf.zeros([count], tf.bool),
            )
            encoded_masks = dense["image/object/mask"]
            masks = tf.cond(
                tf.size(encoded_masks) == count,
                lambda: _decode_png_masks(encoded_masks, height, width),
                lambda: _box_masks(boxes, height, width),
            )
            keep = (
                (classes >= 0)
                & ~is_crowd
                & (boxes[:, 2] > boxes[:, 0])
                & (boxes[:, 3] > boxes[:, 1])
            )
            image_id = tf.cond(
                tf.strings.regex_full_match(dense["image/source_id"], "[0-9]{1,18}"),
                lambda: tf.strings.to_number(dense["image/source_id"], tf.int64),
                lambda: tf.strings.to_hash_bucket_fast(dense["image/source_id"], 2**62),
            )
            example = {
                "image": image,
                "image_id": image_id,
                "boxes": tf.boolean_mask(boxes, keep),
                "classes": tf.boolean_mask(classes, keep),
                "masks": tf.boolean_mask(masks, keep),
            }
            if num_keypoints:
                keypoints = _decode_keypoints(dense, count, num_keypoints, size_yx)
                example["keypoints"] = tf.boolean_mask(keypoints, keep)
            return example

        return decode

    def examples(
        self,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_empty: bool = False,
        shuffle_buffer: int = 1024,
        num_parallel_calls: int = tf.data.AUTOTUNE,
    ) -> tf.data.Dataset:
        """Decoded examples: shards read interleaved and in parallel, decoded in parallel.

        Args:
          shuffle: shuffle the shard order and the records (through ``shuffle_buffer``).
          seed: shuffle seed.
          drop_empty: leave out images without non-crowd instances.
          shuffle_buffer: records held for shuffling.
          num_parallel_calls: parallel decoders (-1 = autotune).
        """
        files = tf.data.Dataset.from_tensor_slices(list(self.files))
        if shuffle:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        records = self._interleave(files)
        if shuffle:
            record_seed = None if seed is None else seed + 1
            records = records.shuffle(
                shuffle_buffer, seed=record_seed, reshuffle_each_iteration=True
            )
        return self._decode(
            records.map(lambda record: {"record": record}), drop_empty, num_parallel_calls
        )

    def pass_examples(
        self,
        order_seed: tf.Tensor,
        first: tf.Tensor,
        *,
        drop_empty: bool = False,
        shuffle_buffer: int = 1024,
        num_parallel_calls: int = tf.data.AUTOTUNE,
    ) -> tf.data.Dataset:
        """Decoded examples of one pass of ``pipeline.training_stream``, from item ``first``.

        The pass reads the shards in the order of a stateless permutation by
        ``order_seed``, interleaved, and shuffles the records in blocks of
        ``shuffle_buffer``, each block by a stateless permutation seeded by
        ``order_seed`` and the block's index: the order is a function of ``order_seed``
        alone (not of TensorFlow's global seed, which ``Dataset.shuffle`` would mix in,
        and which it cannot take with a tensor seed when the global seed is 0). Item
        ``k`` is the ``k``-th record in that order. Starting at ``first`` reads, without
        decoding, the ``first`` records before it. Each example has its item index under
        ``pipeline.INDEX_KEY``.

        Args:
          order_seed: int64 ``[2]``, the seed of the pass's order.
          first: int64 ``[]``, the first item.
          drop_empty: leave out images without non-crowd instances.
          shuffle_buffer: records per shuffled block.
          num_parallel_calls: parallel decoders (-1 = autotune).
        """
        paths = tf.constant(self.files)
        last = len(self.files) - 1
        files = tf.data.Dataset.range(len(self.files)).map(
            lambda i: tf.gather(paths, tf.random.experimental.index_shuffle(i, order_seed, last))
        )
        records = (
            self._interleave(files)
            .batch(shuffle_buffer)
            .enumerate()
            .map(
                lambda block, block_records: tf.random.experimental.stateless_shuffle(
                    block_records, tf.random.experimental.stateless_fold_in(order_seed, block)
                )
            )
            .unbatch()
        )
        items = records.enumerate().skip(first)
        items = items.map(lambda k, record: {"record": record, pipeline.INDEX_KEY: k})
        return self._decode(items, drop_empty, num_parallel_calls)

    def _interleave(self, files: tf.data.Dataset) -> tf.data.Dataset:
        """The records of ``files``, read in parallel, one from each in turn."""
        return files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(self.files), 16),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def _decode(
        self, items: tf.data.Dataset, drop_empty: bool, num_parallel_calls: int
    ) -> tf.data.Dataset:
        """``{"record": serialized, ...}`` items -> decoded examples that keep the items'
        other keys; undecodable records skipped unless ``strict``."""
        decoder = self._decoder()
        dataset = items.map(
            lambda item: {
                **decoder(item["record"]),
                **{key: value for key, value in item.items() if key != "record"},
            },
            num_parallel_calls=num_parallel_calls,
        )
        if not self.strict:
            dataset = dataset.ignore_errors(log_warning=True)
        if drop_empty:
            dataset = dataset.filter(lambda example: tf.shape(example["boxes"])[0] > 0)
        return dataset


def _check_framing(path: str) -> None:
    """Walks the record headers of a local TFRecord file (8-byte length, 4-byte CRC, data,
    4-byte CRC) by seeking, without reading the records; ``DataError`` naming the file when
    a record runs past its end. Remote files (``gs://`` ...) are not checked."""
    if not os.path.isfile(path):
        return
    size = os.path.getsize(path)
    offset = 0
    count = 0
    with open(path, "rb") as handle:
        while offset < size:
            header = handle.read(12)
            length = int.from_bytes(header[:8], "little") if len(header) == 12 else None
            if length is None or offset + 16 + length > size:
                raise DataError(
                    f"{path}: truncated TFRecord shard (record {count} at byte {offset} runs "
                    f"past the end of the {size}-byte file); convert it again"
                )
            offset += 16 + length
            count += 1
            handle.seek(offset)


def _decode_png_masks(encoded: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """PNG strings ``[n]`` -> uint8 ``[n, height, width]`` (nonzero -> 1)."""

    def decode_one(png: tf.Tensor) -> tf.Tensor:
        mask = tf.io.decode_png(png, channels=1)[:, :, 0]
        return tf.cast(mask > 0, tf.uint8)

    def decode_all() -> tf.Tensor:
        masks = tf.map_fn(
            decode_one, encoded, fn_output_signature=tf.TensorSpec([None, None], tf.uint8)
        )
        return tf.reshape(masks, [-1, height, width])

    # map_fn cannot stack an empty list of masks of unknown shape.
    return tf.cond(tf.size(encoded) > 0, decode_all, lambda: tf.zeros([0, height, width], tf.uint8))


def _box_masks(boxes: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Masks that are their boxes: pixels whose centre lies in the box. uint8 ``[n, H, W]``."""
    ys = tf.range(height, dtype=tf.float32) + 0.5
    xs = tf.range(width, dtype=tf.float32) + 0.5
    inside_y = (ys[None, :] >= boxes[:, 0:1]) & (ys[None, :] < boxes[:, 2:3])
    inside_x = (xs[None, :] >= boxes[:, 1:2]) & (xs[None, :] < boxes[:, 3:4])
    return tf.cast(inside_y[:, :, None] & inside_x[:, None, :], tf.uint8)


def _decode_keypoints(
    dense: Mapping[str, tf.Tensor], count: tf.Tensor, num_keypoints: int, size_yx: tf.Tensor
) -> tf.Tensor:
    """``[n, K, 3]`` ``(x, y, v)`` in continuous pixels (index + 0.5); zeros when absent."""
    xs = dense["image/object/keypoint/x"]
    ys = dense["image/object/keypoint/y"]
    visibility = dense["image/object/keypoint/visibility"]

    def present() -> tf.Tensor:
        v = tf.cast(tf.reshape(visibility, [count, num_keypoints]), tf.float32)
        y = tf.reshape(ys, [count, num_keypoints]) * size_yx[0] + 0.5
        x = tf.reshape(xs, [count, num_keypoints]) * size_yx[1] + 0.5
        return tf.stack([tf.where(v > 0, x, 0.0), tf.where(v > 0, y, 0.0), v], axis=-1)

    expected = count * num_keypoints
    return tf.cond(
        (tf.size(xs) == expected) & (tf.size(ys) == expected) & (tf.size(visibility) == expected),
        present,
        lambda: tf.zeros([count, num_keypoints, 3], tf.float32),
    )
