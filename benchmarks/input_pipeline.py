"""Images per second of the training input pipeline at 800x1333, from JSON and from shards.

Builds a COCO-like synthetic set (shapes dataset, 480x800 JPEG images, so that the default
resize gives exactly 800x1333, padded to 800x1344), converts it to TFRecord shards, and
times ``kmask.data.build_dataset(..., training=True)`` from each source with the default
``DataConfig`` (flip on, 112x112 box-frame masks, 100 instances). Prints figures; asserts
nothing. Compare with the training step rate: the input is a bottleneck when
``images/s < batch size x steps/s``.

    python benchmarks/input_pipeline.py [--num-images 48] [--batches 100] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image


def _make_dataset(root: Path, num_images: int) -> Path:
    from kmask.data import ShapesDataset

    paths = ShapesDataset((480, 800), seed=0, max_shapes=8).write(
        root, num_train=num_images, num_val=0, progress=False
    )
    data = json.loads(paths["train"].read_text())
    for entry in data["images"]:
        png = root / entry["file_name"]
        buffer = io.BytesIO()
        Image.open(png).save(buffer, format="JPEG", quality=90)
        entry["file_name"] = entry["file_name"].replace(".png", ".jpg")
        (root / entry["file_name"]).write_bytes(buffer.getvalue())
        png.unlink()
    paths["train"].write_text(json.dumps(data))
    return paths["train"]


def _images_per_second(dataset, batches: int, batch_size: int) -> tuple[float, tuple]:
    iterator = iter(dataset.repeat())
    features, _ = next(iterator)  # tracing and warm-up
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        features, _ = next(iterator)
    elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed, tuple(features["images"].shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()

    from kmask.config import DataConfig
    from kmask.data import COCODataset, ShardWriter, build_dataset

    config = DataConfig(seed=0)
    print(f"CPU cores: {os.cpu_count()}; DataConfig: {config}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        json_path = _make_dataset(root, args.num_images)

        start = time.perf_counter()
        writer = ShardWriter(root / "shards", num_shards=4, prefix="bench")
        writer.write(COCODataset(json_path, root), progress=False)
        conversion = writer.images_written / (time.perf_counter() - start)
        print(f"convert-coco: {conversion:.1f} images/s (4 shards)")

        sources = {
            "json": {"json_path": json_path, "images_dir": root},
            "shards": {"tfrecord_pattern": str(root / "shards" / "bench-*.tfrecord")},
        }
        for name, source in sources.items():
            dataset = build_dataset(config, training=True, batch_size=args.batch_size, **source)
            rate, shape = _images_per_second(dataset, args.batches, args.batch_size)
            print(f"training pipeline from {name:6s}: {rate:6.1f} images/s (batch images {shape})")


if __name__ == "__main__":
    main()
