"""The one way kmask's TensorFlow graphs decode encoded images (TFRecord shards, the
SavedModel's ``image_bytes`` and ``tf_example`` inputs).

JPEG goes through ``tf.io.decode_jpeg`` with ``dct_method="INTEGER_ACCURATE"``: libjpeg's
default (accurate integer IDCT, fancy chroma upsampling), the settings Pillow decodes with
in kmask's Python readers (``image_io.decode_rgb``: the COCO JSON reader, ``kmask
predict``), so a JPEG gives the same pixels on every path (``tests/data/test_jpeg_paths.py``
checks it). TensorFlow's default (``tf.io.decode_image``, ``dct_method=""``) is libjpeg's
fast IDCT: on a random 262x194 test image it changed two thirds of the RGB values, by up
to 6 levels, and in the serving issue's example it moved detection scores by 0.003 to
0.016. PNG and BMP have one exact decoding.
"""

from __future__ import annotations

import tensorflow as tf

JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """uint8 ``[H, W, 3]`` RGB of one encoded JPEG, PNG, BMP or (first frame) GIF image, a
    scalar string; grayscale is repeated into three channels. An op error
    (InvalidArgument) for anything else or a corrupt image."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=JPEG_DCT_METHOD),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image
