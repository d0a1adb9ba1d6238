"""Writing a COCO dataset as TFRecord shards (``kmask convert-coco``)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kmask.data import image_io
from kmask.data.coco_dataset import COCODataset
from kmask.data.image_record import ImageRecord
from kmask.data.shard_dataset import CATEGORIES_FILE
from kmask.errors import DataError

# Images per shard when the number of shards is not given (~100-200 MB of COCO images).
IMAGES_PER_SHARD = 1000


class ShardWriter:
    """Converts a ``COCODataset`` to ``{prefix}-NNNNN-of-MMMMM.tfrecord`` shards.

    Records use the Object Detection API / Model Garden feature keys (see
    ``ShardDataset``): the original image bytes when TensorFlow decodes them to the same
    RGB pixels (8-bit RGB or grayscale JPEG/PNG), otherwise an RGB PNG; normalized boxes;
    original category ids in ``image/object/class/label`` and names in
    ``image/object/class/text``; every instance including crowd ones (``is_crowd`` = 1) with
    a 0/1 PNG mask; keypoints when the dataset has them. All images are written, also
    those without annotations (readers drop them for training). Image i goes to shard
    ``i % num_shards``.

    Shards are written in parallel threads under hidden temporary names (``.NAME.tmp-PID``)
    and renamed only after every shard is complete; ``categories.json`` is written last.
    An interrupted or failed conversion removes its temporary files and leaves no file
    with a shard's name; those of a killed one are removed by the next conversion.

    Args:
      out_dir: output folder (created).
      num_shards: number of shards; default one per ``IMAGES_PER_SHARD`` images.
      prefix: shard file name prefix.
      num_workers: writer threads; default ``min(num_shards, os.cpu_count())``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        num_shards: int | None = None,
        prefix: str = "coco",
        num_workers: int | None = None,
    ) -> None:
        if num_shards is not None and num_shards <= 0:
            raise DataError(f"--num-shards must be positive, got {num_shards}")
        if not prefix or "/" in prefix or prefix.startswith("."):
            raise DataError(f"invalid shard prefix {prefix!r}")
        self.out_dir = Path(out_dir)
        self.num_shards = num_shards
        self.prefix = prefix
        self.num_workers = num_workers
        self.images_written = 0
        self.instances_written = 0
        self._lock = threading.Lock()

    def shard_paths(self, num_shards: int) -> list[Path]:
        """Final paths of ``num_shards`` shards."""
        return [
            self.out_dir / f"{self.prefix}-{i:05d}-of-{num_shards:05d}.tfrecord"
            for i in range(num_shards)
        ]

    def write(self, dataset: COCODataset, progress: bool = True) -> list[Path]:
        """Writes the shards and ``categories.json``; returns the shard paths.

        Raises:
          DataError: bad input in strict mode; shards of another conversion with the same
            prefix but a different shard count in ``out_dir``; a ``categories.json`` there
            with other categories.
        """
        num_shards = self.num_shards or max(1, math.ceil(len(dataset) / IMAGES_PER_SHARD))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        self._check_out_dir(dataset, num_shards)
        paths = self.shard_paths(num_shards)
        temporaries = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
        stop = threading.Event()
        workers = self.num_workers or min(num_shards, os.cpu_count() or 1)
        bar = tqdm(total=len(dataset), unit="img", desc="convert-coco", disable=not progress)
        self.images_written = self.instances_written = 0
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(self._write_shard, dataset, shard, num_shards, temp, stop, bar)
                    for shard, temp in enumerate(temporaries)
                ]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        future.result()
                except BaseException:
                    stop.set()
                    raise
            for temporary, path in zip(temporaries, paths):
                os.replace(temporary, path)
            image_io.write_atomic(
                self.out_dir / CATEGORIES_FILE, dataset.categories.to_json().encode()
            )
        finally:
            stop.set()
            bar.close()
            for temporary in temporaries:
                if temporary.exists():
                    temporary.unlink()
        return paths

    def _remove_stale_temporaries(self) -> None:
        """Removes the temporary shards of this prefix left by a killed conversion (one
        whose process no longer runs)."""
        pattern = re.compile(rf"\.{re.escape(self.prefix)}-\d{{5}}-of-\d{{5}}\.tfrecord\.tmp-(\d+)")
        for path in self.out_dir.iterdir():
            match = pattern.fullmatch(path.name)
            if match and not _process_alive(int(match.group(1))):
                path.unlink(missing_ok=True)

    def _check_out_dir(self, dataset: COCODataset, num_shards: int) -> None:
        pattern = re.compile(rf"{re.escape(self.prefix)}-\d{{5}}-of-(\d{{5}})\.tfrecord")
        stale = sorted(
            p.name
            for p in self.out_dir.iterdir()
            if (m := pattern.fullmatch(p.name)) and int(m.group(1)) != num_shards
        )
        if stale:
            raise DataError(
                f"{self.out_dir} holds shards of another conversion ({stale[0]}, ...); "
                "remove them or choose another --out or --prefix"
            )
        categories = self.out_dir / CATEGORIES_FILE
        if categories.is_file() and categories.read_text() != dataset.categories.to_json():
            raise DataError(
                f"{categories} lists other categories than {dataset.json_path}; "
                "choose another --out"
            )

    def _write_shard(
        self,
        dataset: COCODataset,
        shard: int,
        num_shards: int,
        path: Path,
        stop: threading.Event,
        bar: tqdm,
    ) -> None:
        with tf.io.TFRecordWriter(str(path)) as writer:
            for index in range(shard, len(dataset), num_shards):
                if stop.is_set():
                    return
                record = dataset.records[index]
                image = dataset.read_image(record)
                if image is not None:
                    writer.write(_example(dataset, record, *image).SerializeToString())
                with self._lock:
                    bar.update(1)
                    if image is not None:
                        self.images_written += 1
                        self.instances_written += len(record.boxes)


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bytes(values: list[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values).ravel()))


def _ints(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values).ravel()))


def _example(
    dataset: COCODataset,
    record: ImageRecord,
    rgb: np.ndarray,
    data: bytes,
    keep_format: str | None,
) -> tf.train.Example:
    """The ``tf.train.Example`` of one image and all its instances."""
    if keep_format is None:
        data, keep_format = image_io.encode_png(rgb), "png"
    height, width = record.height, record.width
    boxes = record.boxes
    names = [dataset.category_names[c].encode() for c in record.classes]
    masks = dataset.decode_masks(record)
    feature = {
        "image/encoded": _bytes([data]),
        "image/format": _bytes([keep_format.encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/filename": _bytes([record.file_name.encode()]),
        "image/source_id": _bytes([str(record.image_id).encode()]),
        "image/key/sha256": _bytes([hashlib.sha256(data).hexdigest().encode()]),
        "image/object/bbox/ymin": _floats(boxes[:, 0] / height),
        "image/object/bbox/xmin": _floats(boxes[:, 1] / width),
        "image/object/bbox/ymax": _floats(boxes[:, 2] / height),
        "image/object/bbox/xmax": _floats(boxes[:, 3] / width),
        "image/object/class/label": _ints(record.category_ids),
        "image/object/class/text": _bytes(names),
        "image/object/is_crowd": _ints(record.is_crowd.astype(np.int64)),
        "image/object/area": _floats(record.areas),
        "image/object/mask": _bytes([image_io.encode_png(m) for m in masks]),
    }
    num_keypoints = dataset.categories.num_keypoints
    if num_keypoints:
        keypoints = record.keypoints
        visibility = keypoints[..., 2].astype(np.int64)
        feature["image/object/keypoint/x"] = _floats(keypoints[..., 0] / width)
        feature["image/object/keypoint/y"] = _floats(keypoints[..., 1] / height)
        feature["image/object/keypoint/visibility"] = _ints(visibility)
        feature["image/object/keypoint/num"] = _ints(np.count_nonzero(visibility > 0, axis=1))
        feature["image/object/keypoint/text"] = _bytes(
            [name.encode() for name in dataset.keypoint_names] * len(boxes)
        )
    return tf.train.Example(features=tf.train.Features(feature=feature))
