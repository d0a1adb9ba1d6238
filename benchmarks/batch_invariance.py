"""What batch-invariant inference costs: seconds per image at batch 1 and 8, mixed sizes.

Three ways to run a batch of images of different sizes, all in this process on the same
images, median of ``--repeats`` runs after one warm-up:

- ``padded batch``: the model on the batch zero-padded to its largest image (what kmask did
  before: an image's detections then depend on its batch mates);
- ``Predictor``: ``Predictor.predict_batch``, which groups the images by padded size and
  runs each group cropped to it (``kmask evaluate``, ``kmask predict``);
- ``SingleImageRunner``: each image at its own padded size in a graph loop (the exported
  SavedModel's ``image_bytes`` / ``tf_example`` signatures).

Batch 1 is the first image alone. Batch 8 has 8 different aspect ratios (COCO's common
ones), each resized by the evaluation preprocessing (shorter side ``max(min_size)``,
longer at most ``max_size``).

    python benchmarks/batch_invariance.py                          # shapes_tiny, 128 px side
    python benchmarks/batch_invariance.py --config configs/mask_rcnn_r50_fpn_1x_coco.yaml \
        --side 800 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

# (height, width) ratios of the test images to --side: COCO's common shapes.
RATIOS = [(3, 4), (4, 3), (2, 3), (3, 2), (1, 1), (3, 5), (5, 4), (9, 16)]


def median_seconds(run: Callable[[dict], object], batch: dict, repeats: int) -> float:
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_tiny.yaml")
    parser.add_argument("--side", type=int, default=128, help="longer side of the images")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from kmask.config import load_config
    from kmask.evaluation import Predictor
    from kmask.modeling.factory import build_mask_rcnn
    from kmask.modeling.single_image_runner import SingleImageRunner

    config = load_config(args.config, ["model.backbone.weights=null"])  # random weights
    keras.utils.set_random_seed(0)
    model = build_mask_rcnn(config.model)
    model.build({"images": (None, None, None, 3)})
    predictor = Predictor(model, config.data)
    rng = np.random.default_rng(0)
    images = []
    for height, width in RATIOS:
        scale = args.side / max(height, width)
        shape = (round(height * scale), round(width * scale), 3)
        images.append(rng.integers(0, 256, shape, dtype=np.uint8))

    def batch_of(count: int) -> dict[str, tf.Tensor]:
        features = [predictor.features_for_image(image) for image in images[:count]]
        height = max(int(f["images"].shape[1]) for f in features)
        width = max(int(f["images"].shape[2]) for f in features)
        padded = [tf.image.pad_to_bounding_box(f["images"], 0, 0, height, width) for f in features]
        return {
            "images": tf.concat(padded, 0),
            "image_size": tf.concat([f["image_size"] for f in features], 0),
        }

    padded_batch = tf.function(model.predict_step, reduce_retracing=True)
    runner = tf.function(SingleImageRunner(model, config.data), reduce_retracing=True)
    ways = {
        "padded batch": lambda batch: padded_batch(batch)["num_detections"].numpy(),
        "Predictor": lambda batch: predictor.predict_batch(batch)["num_detections"],
        "SingleImageRunner": lambda batch: runner(batch["images"], batch["image_size"])[
            "num_detections"
        ].numpy(),
    }
    print(f"model: {args.config}, random weights; images: longer side {args.side} px")
    print(f"{'way':<20}{'batch 1 s/image':>18}{'batch 8 s/image':>18}")
    for name, way in ways.items():
        row = []
        for count in (1, 8):
            row.append(median_seconds(way, batch_of(count), args.repeats) / count)
        print(f"{name:<20}{row[0]:>18.3f}{row[1]:>18.3f}")


if __name__ == "__main__":
    main()
