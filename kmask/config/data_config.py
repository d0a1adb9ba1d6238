"""``DataConfig``: the input pipeline (``data``)."""

from __future__ import annotations

import dataclasses

from kmask.config.old_spellings import accepts_old_spellings
from kmask.errors import ConfigError


@accepts_old_spellings("data")
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline: resizing, augmentation and padding of images and ground truth.

    Read only by ``kmask.data``; the batch format it produces is described there.
    """

    # Shorter side; several values = one drawn at random per image (multi-scale training).
    # Evaluation uses the largest value.
    min_size: tuple[int, ...] = (800,)
    # Upper bound of the longer side after resizing (the shorter side gives way).
    max_size: int = 1333
    # Resized side = side * scale rounded ("round": detectron2) or floored ("floor":
    # torchvision's interpolate).
    resize_rounding: str = "round"
    # Images are zero-padded at the bottom/right to a multiple of this (FPN strides up to 32).
    size_divisibility: int = 32
    # Fixed padded (height, width) for static shapes (TPU/XLA); images are then also shrunk
    # to fit inside it. None = pad each image to size_divisibility and each batch to its
    # largest image.
    image_size: tuple[int, ...] | None = None
    # Ground truth is padded (class -1) or truncated to this many instances per image.
    max_instances: int = 100
    # Side of the per-instance masks, cropped to their own box (Model Garden's crop size).
    gt_mask_size: int = 112
    # Training's shorter side from min_size: "choice" draws one of the values, "range" an
    # integer in [min(min_size), max(min_size)] (detectron2's MIN_SIZE_TRAIN_SAMPLING).
    min_size_sampling: str = "choice"
    # Random left-right flip in training (boxes, masks and keypoints follow).
    horizontal_flip: bool = True
    # Training skips images without usable (non-crowd) instances; evaluation keeps all.
    drop_images_without_annotations: bool = True
    # TFRecord sources: serialized records held for shuffling in training (JSON sources
    # shuffle the whole list of image ids).
    shuffle_buffer: int = 1024
    # Seed of shuffling, flips and scale choice; None = different on every run.
    seed: int | None = None
    # Parallel calls of the decoding and transform maps; -1 = tf.data.AUTOTUNE.
    num_parallel_calls: int = -1
    # Bad input (missing/corrupt image, invalid annotation) raises instead of being skipped.
    strict: bool = False
    # Read COCO file_name values that are absolute or leave the images folder through "..";
    # by default such images are skipped (or refused under strict).
    allow_outside_images: bool = False

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"data.seed: expected an integer >= 0 or null, got {self.seed}")
        if self.num_parallel_calls < 1 and self.num_parallel_calls != -1:
            raise ConfigError(
                "data.num_parallel_calls: expected an integer >= 1, or -1 for autotune, got "
                f"{self.num_parallel_calls}"
            )
        if self.shuffle_buffer <= 0:
            raise ConfigError("data.shuffle_buffer: expected a positive integer")
        if not self.min_size or min(self.min_size) <= 0:
            raise ConfigError(f"data.min_size: expected positive sizes, got {self.min_size!r}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) <= 0):
            raise ConfigError(
                f"data.image_size: expected (height, width) or null, got {self.image_size!r}"
            )
        if self.resize_rounding not in ("round", "floor"):
            raise ConfigError(
                f"data.resize_rounding: expected round or floor, got {self.resize_rounding!r}"
            )
        for name in ("max_size", "size_divisibility", "max_instances", "gt_mask_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name}: expected a positive integer")
        if self.min_size_sampling not in ("choice", "range"):
            raise ConfigError(
                f"data.min_size_sampling: expected choice or range, got {self.min_size_sampling!r}"
            )
