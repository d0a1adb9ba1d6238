"""Input data: COCO JSON and TFRecord sources, tf.data transforms, synthetic shapes.

Building a pipeline::

    from kmask.data import build_dataset, open_dataset
    train = build_dataset(config.data, json_path="shapes/train.json", images_dir="shapes",
                          training=True, batch_size=2)
    source = open_dataset(tfrecord_pattern="shards/coco-*.tfrecord")  # categories.json beside
    val = source.build(config.data, training=False, batch_size=1)
    source.num_classes, source.category_names, source.category_ids  # class k <-> COCO id

Either call gives one epoch (``model.fit`` re-iterates it every epoch, reshuffled; add
``.repeat()`` for step-based loops). With ``config.data.seed`` set, the order and every
random choice are the same on every run. ``source.training_stream(config.data,
batch_size=..., start=StreamPosition(...))`` is the endless stream ``kmask train`` reads:
a pure function of the data and ``config.data.seed`` that resumes at any position with
the very batches of the uninterrupted stream (``pipeline.training_stream``).

Element ``(features, targets)``, ``B`` = batch size, ``N`` = ``data.max_instances`` (100),
``M`` = ``data.gt_mask_size`` (112); unbatched elements have the same keys without ``B``:

features
  ``images`` float32 ``[B, H, W, 3]``: RGB, pixel values 0..255, NOT normalized. The model
  normalizes its input itself (``model.input``), so that exported models take raw pixels,
  and zeroes the padding after normalization. Zero padding at the bottom and right:
  ``H, W`` are the largest resized image of the batch rounded up to a multiple of
  ``data.size_divisibility`` (32), or exactly ``data.image_size`` when that is set (static
  shapes; images are then also shrunk to fit).
  ``image_size`` int32 ``[B, 2]``: (height, width) of the resized image inside the padding.
  ``original_size`` int32 ``[B, 2]``: (height, width) of the source image; predictions map
  back to source pixels by the factors ``original_size / image_size``.
  ``image_id`` int64 ``[B]``: COCO image id.
targets
  ``gt_boxes`` float32 ``[B, N, 4]``: ``(y1, x1, y2, x2)`` in pixels of the resized image
  (continuous coordinates, pixel ``p`` spans ``[p, p + 1)``); padding rows 0.
  ``gt_classes`` int32 ``[B, N]``: contiguous 0-based foreground class ids; -1 = padding.
  ``gt_masks`` uint8 ``[B, N, M, M]`` in {0, 1}: each instance's mask cropped to its own
  box and resampled: cell ``(i, j)`` is the full-resolution mask sampled bilinearly at
  ``y = y1 + (i + 0.5) (y2 - y1) / M``, ``x = x1 + (j + 0.5) (x2 - x1) / M``, thresholded
  at 0.5 (``>= 0.5`` is 1). Padding all zeros. Memory: 2 images x 100 instances x 112 x 112
  bytes = 2.5 MB per batch, against 200 MB for full-image masks at 1024 x 1024. Because
  masks live in their box frame, resizing the image does not touch them and the flip
  reverses their columns.
  ``gt_keypoints`` float32 ``[B, N, K, 3]`` (K = 17 for COCO persons): ``(x, y, v)``, the
  order of COCO's annotations and of the model's ``detection_keypoints`` ``(x, y, score)``,
  in resized-image pixels (continuous: COCO's integer pixel index + 0.5), ``v`` the COCO
  visibility 0/1/2, ``(0, 0, 0)`` when unlabelled; left/right swapped on flip. Only when
  the dataset's categories define keypoints.
  ``seed`` int64 ``[B]`` (training only): the image's random seed. Its scale choice and
  flip were drawn from it, and the model's anchor and RoI sampling draw from it
  (stateless, ``kmask.ops.sampling``).
  ``stream_position`` int64 ``[B]`` (``training_stream`` only): ``StreamPosition.key``
  of the image in the stream.

Crowd instances never appear in the targets. Ground truth beyond ``N`` instances is cut.
Training draws the shorter side from ``data.min_size`` (evaluation uses the largest) and
flips with probability 0.5; images without non-crowd instances are dropped in training
(``data.drop_images_without_annotations``) and always kept in evaluation.

Modules: ``coco_dataset.COCODataset`` (JSON + images; ``coco_parser.COCOParser`` validates
the JSON), ``shard_dataset.ShardDataset`` (TFRecords), ``shard_writer.ShardWriter``
(``kmask convert-coco``), ``cityscapes_converter.CityscapesConverter`` (``kmask
convert-cityscapes``),
``shapes_dataset.ShapesDataset`` (``kmask make-shapes``), ``transforms`` (tf ops),
``pipeline`` (batching, the training stream), ``stream_position.StreamPosition``,
``category_map.CategoryMap``, ``bad_input_report.BadInputReport``.
"""

from kmask.data.bad_input_report import BadInputReport
from kmask.data.builder import build_dataset, open_dataset
from kmask.data.category_map import CategoryMap
from kmask.data.coco_dataset import COCODataset
from kmask.data.image_record import ImageRecord
from kmask.data.shapes_dataset import ShapesDataset
from kmask.data.shard_dataset import ShardDataset
from kmask.data.shard_writer import ShardWriter
from kmask.data.stream_position import StreamPosition
from kmask.errors import DataError

CocoDataset = COCODataset  # the class's name in kmask 0.1, which users' code imports

__all__ = [
    "BadInputReport",
    "CategoryMap",
    "COCODataset",
    "CocoDataset",
    "DataError",
    "ImageRecord",
    "ShapesDataset",
    "ShardDataset",
    "ShardWriter",
    "StreamPosition",
    "build_dataset",
    "open_dataset",
]
