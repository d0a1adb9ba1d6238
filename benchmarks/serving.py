"""Export time, export sizes and CPU latency per image of the exported models.

Prints, for one model: the SavedModel, ONNX and TFLite (float32, float16, int8-dynamic)
export times and sizes, then the latency per image at batch 1 and 8 through the loaded
SavedModel (``serving_default``, ``image_tensor`` input), ONNX Runtime (CPU), the LiteRT
interpreter (``ai-edge-litert``; its input is one image of the export size, so "batch 8"
is 8 images one after the other) and the Keras model's ``predict_on_batch`` (kmask's own
preprocessing done beforehand, so it times the model alone), all in this process on the
same images. Median of ``--repeats`` runs after one warm-up run.

    python benchmarks/serving.py             # configs/shapes_tiny.yaml, random weights
    python benchmarks/serving.py --run runs/shapes --image-size 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_tiny.yaml")
    parser.add_argument("--run", help="a run directory (its config and latest checkpoint)")
    parser.add_argument("--image-size", type=int, default=128, help="square test images (128)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import os

    import keras
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from kmask.config import load_config
    from kmask.evaluation import Predictor
    from kmask.export import export_onnx, export_saved_model, export_tflite
    from kmask.export.tflite_exporter import PRECISIONS as TFLITE_PRECISIONS
    from kmask.modeling.factory import build_mask_rcnn
    from kmask.runs import InferenceSource

    if args.run:
        source = InferenceSource.resolve(run=args.run)
        config, model = source.config, source.load_model()
    else:
        config = load_config(args.config)
        keras.utils.set_random_seed(0)
        model = build_mask_rcnn(config.model)
        model.build({"images": (None, None, None, 3)})
    rng = np.random.default_rng(0)
    side = args.image_size
    images = rng.integers(0, 256, (8, side, side, 3), dtype=np.uint8)

    work = Path(tempfile.mkdtemp(prefix="kmask-serving-bench-"))
    start = time.perf_counter()
    saved_model = export_saved_model(model, work / "saved_model", config.data, None, "image_tensor")
    saved_model_seconds = time.perf_counter() - start
    start = time.perf_counter()
    onnx_path = export_onnx(model, work / "model.onnx", config.data)
    onnx_seconds = time.perf_counter() - start
    tflite_paths, tflite_seconds = {}, {}
    for precision in TFLITE_PRECISIONS:
        start = time.perf_counter()
        tflite_paths[precision] = export_tflite(
            model, work / f"{precision}.tflite", config.data, None, (side, side), precision
        )
        tflite_seconds[precision] = time.perf_counter() - start
    threads = os.cpu_count()
    print(
        f"model: {args.run or args.config}; images {side}x{side}; CPU threads: default "
        f"(TensorFlow, ONNX Runtime), {threads} (LiteRT)"
    )
    print(
        f"SavedModel export {saved_model_seconds:6.1f} s, "
        f"{folder_size(saved_model) / 2**20:6.1f} MiB ({saved_model})"
    )
    print(
        f"ONNX export       {onnx_seconds:6.1f} s, "
        f"{onnx_path.stat().st_size / 2**20:6.1f} MiB ({onnx_path})"
    )
    for precision, path in tflite_paths.items():
        print(
            f"TFLite {precision:<12} {tflite_seconds[precision]:6.1f} s, "
            f"{path.stat().st_size / 2**20:6.1f} MiB ({path})"
        )

    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    litert = {
        precision: Interpreter(model_path=str(path), num_threads=threads).get_signature_runner(
            "serving_default"
        )
        for precision, path in tflite_paths.items()
    }
    predictor = Predictor(model, config.data)
    print(f"{'latency per image (ms)':<24}{'batch 1':>10}{'batch 8':>10}")
    rows: dict[str, list[float]] = {
        "SavedModel": [],
        "ONNX Runtime": [],
        **{f"LiteRT {precision}": [] for precision in litert},
        "Keras predict": [],
    }
    for batch in (1, 8):
        chunk = images[:batch]
        features = [predictor.features_for_image(image) for image in chunk]
        stacked = {key: tf.concat([f[key] for f in features], 0) for key in features[0]}
        runs = {
            "SavedModel": lambda c=chunk: serve(image_tensor=tf.constant(c)),
            "ONNX Runtime": lambda c=chunk: session.run(None, {"image_tensor": c}),
            **{
                f"LiteRT {precision}": lambda c=chunk, r=runner: [
                    r(image_tensor=image[None]) for image in c
                ]
                for precision, runner in litert.items()
            },
            "Keras predict": lambda s=stacked: model.predict_on_batch(s),
        }
        for name, run in runs.items():
            rows[name].append(median_seconds(run, args.repeats) / batch * 1000)
    for name, (one, eight) in rows.items():
        print(f"{name:<24}{one:>10.1f}{eight:>10.1f}")


if __name__ == "__main__":
    main()
