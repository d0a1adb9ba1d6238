"""One JPEG decoding on every path: Pillow in the Python readers (COCO JSON, ``kmask
predict``) and ``image_decoding.decode_image`` in the graphs (TFRecord shards, the
SavedModel) give the same pixels, for the chroma subsamplings and modes JPEG files come in.
TensorFlow's default JPEG decoding (``tf.io.decode_image``: libjpeg's fast IDCT) does not,
on the same files. The SavedModel's side is in tests/export/test_saved_model.py (JPEG and
PNG requests against ``kmask``'s own predictions)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmask.data import COCODataset, ShardWriter, open_dataset
from kmask.data.image_decoding import decode_image
from kmask.data.image_io import decode_rgb
from tests.toy_data import write_coco


def photo_like(seed: int, height: int = 75, width: int = 101) -> np.ndarray:
    """uint8 RGB with smooth gradients and edges (noise alone compresses unlike photos)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([128 + 100 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1)
    image += rng.normal(0, 12, image.shape)
    image[height // 3 : height // 2, width // 4 : width // 2] = rng.integers(0, 256, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


CASES = {
    "4:2:0": {"quality": 85, "subsampling": 2},
    "4:2:2": {"quality": 90, "subsampling": 1},
    "4:4:4": {"quality": 75, "subsampling": 0},
    "progressive": {"quality": 80, "progressive": True},
}


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    found = {
        name: jpeg(photo_like(i), **options) for i, (name, options) in enumerate(CASES.items())
    }
    found["grayscale"] = jpeg(photo_like(9)[:, :, 0])
    return found


def test_graph_decoder_gives_pillows_pixels(files):
    fast_differs = 0
    for name, data in files.items():
        python, keep = decode_rgb(data)
        assert keep == "jpeg", name
        graph = decode_image(tf.constant(data)).numpy()
        np.testing.assert_array_equal(graph, python, err_msg=name)
        default = tf.io.decode_image(data, channels=3).numpy()
        fast_differs += int(np.any(default != python))
    # The test could fail: TensorFlow's default settings disagree with Pillow on these files.
    assert fast_differs >= 4


def test_coco_reader_and_shards_read_the_same_jpeg_pixels(files, tmp_path):
    """Training and evaluation read a JPEG dataset from JSON (Pillow) or from shards (the
    JPEG stored as is, decoded in the graph): the same pixels."""
    entries = []
    for index, data in enumerate(files.values()):
        height, width = decode_rgb(data)[0].shape[:2]
        entries.append(
            ({"id": index + 1, "file_name": f"{index}.jpg", "height": height, "width": width}, data)
        )
    annotations = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400.0, "iscrowd": 0}
    ]
    path = write_coco(tmp_path, entries, annotations)
    coco = COCODataset(path, tmp_path / "images")
    ShardWriter(tmp_path / "shards", num_shards=1, prefix="jpeg").write(coco, progress=False)
    shards = open_dataset(tfrecord_pattern=str(tmp_path / "shards" / "jpeg-*.tfrecord"))
    from_json = {int(e["image_id"]): e["image"] for e in coco.examples().as_numpy_iterator()}
    from_shards = {int(e["image_id"]): e["image"] for e in shards.examples().as_numpy_iterator()}
    assert sorted(from_json) == sorted(from_shards) == list(range(1, len(files) + 1))
    for image_id, image in from_json.items():
        np.testing.assert_array_equal(from_shards[image_id], image, err_msg=str(image_id))
        np.testing.assert_array_equal(image, decode_rgb(entries[image_id - 1][1])[0])
