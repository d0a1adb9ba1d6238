"""kmask (in each precision) vs torchvision float32 on the same converted model, same
image, same run.

Builds torchvision's ``maskrcnn_resnet50_fpn`` (random weights unless ``--pth`` names a
downloaded checkpoint), saves it as a ``.pth``, runs ``kmask convert-weights``' code on it
(file in, run directory out), loads the run with ``kmask.load_model(run, precision=...)``
once per ``--precision`` (``float32``, ``bfloat16``, ``float16``: the Keras policies
``float32``, ``mixed_bfloat16``, ``mixed_float16``; float32 weights) and times each next
to torchvision in float32 on one random ``--size`` image, batch 1, median of
``--repeats`` calls after a warm-up. Both times end with boxes and masks pasted at the
source image's size (kmask resizes the image once, outside the timing, with
``features_for_image``; torchvision's normalization and resizing are inside its call):
torchvision's model call under ``torch.no_grad`` (its ``postprocess`` pastes the masks),
kmask's ``Predictor.predict_batch`` then ``image_detections`` (the model alone, without
the pasting, is printed too). The ratios compare these end-to-end times.

Both libraries resize the image to the same size: torchvision's
``GeneralizedRCNNTransform`` gets ``min_size``/``max_size`` = ``--min-size``/``--max-size``
and kmask's config ``data.min_size``/``data.max_size`` the same values (default 800 and
1333, the papers' test size and torchvision's default); the sizes each library actually
resized to (and padded to) are printed. The issue 23 figure is a 1024x1024 image run at
1024x1024: ``--size 1024 1024 --min-size 1024 --max-size 1024``.

Prints the conversion time, the run directory's size, the threads of both libraries,
whether TensorFlow's oneDNN is on (bfloat16 is fast on a CPU only with it:
``TF_ENABLE_ONEDNN_OPTS`` unset or 1; this script does not change it), the number of
detections each returned (kmask always runs its mask head on its 100 detection slots;
torchvision only on the detections above its ``score_thresh``, 0.05 unless
``--torchvision-score-thresh`` changes it), each median and the time ratios kmask-bfloat16
/ torchvision-float32 and kmask-bfloat16 / kmask-float32.

    python benchmarks/converted_inference.py [--arch maskrcnn_resnet50_fpn] [--repeats 3]
        [--precision float32 bfloat16] [--size 1024 1024 --min-size 1024 --max-size 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: F401  (before TensorFlow: torchvision after TF crashes)

import kmask  # noqa: E402
from kmask.config import load_config  # noqa: E402
from kmask.convert import convert_weights  # noqa: E402
from kmask.evaluation import Predictor  # noqa: E402


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up (graph tracing, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _kmask_seconds(predictor: Predictor, features: dict, repeats: int) -> tuple[float, float]:
    """Median seconds of ``predict_batch`` alone and with ``image_detections`` (boxes and
    masks pasted at the source image's size, as torchvision's call returns them)."""
    predictor.image_detections(predictor.predict_batch(features), 0)  # warm-up
    model, end_to_end = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = predictor.predict_batch(features)
        model.append(time.perf_counter() - start)
        predictor.image_detections(outputs, 0)
        end_to_end.append(time.perf_counter() - start)
    return statistics.median(model), statistics.median(end_to_end)


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f} ({denominator / numerator:.2f}x the speed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    parser.add_argument("--pth", default=None, help="a torchvision checkpoint to load")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), help="image H W")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16", "float16"],
        help="kmask's precisions (torchvision runs float32)",
    )
    parser.add_argument("--min-size", type=int, default=800, help="resized shorter side")
    parser.add_argument("--max-size", type=int, default=1333, help="resized longer side cap")
    parser.add_argument(
        "--torchvision-score-thresh",
        type=float,
        default=None,
        help="torchvision's roi_heads.score_thresh (default: its own, 0.05)",
    )
    args = parser.parse_args()

    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    print(
        f"threads: torch.get_num_threads() {torch.get_num_threads()}; TensorFlow "
        f"intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, inter-op "
        f"{tf.config.threading.get_inter_op_parallelism_threads()} (0 = TensorFlow's "
        f"default, one per core: {os.cpu_count()} cores); TensorFlow oneDNN {onednn} "
        f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})"
    )

    reference = getattr(torchvision.models.detection, args.arch)(
        weights=None, weights_backbone=None
    ).eval()
    if args.pth:
        reference.load_state_dict(torch.load(args.pth, map_location="cpu", weights_only=True))
    reference.transform.min_size = (args.min_size,)
    reference.transform.max_size = args.max_size
    if args.torchvision_score_thresh is not None:
        reference.roi_heads.score_thresh = args.torchvision_score_thresh
    resize = [f"data.min_size=[{args.min_size}]", f"data.max_size={args.max_size}"]
    with tempfile.TemporaryDirectory() as work:
        pth = Path(work) / f"{args.arch}.pth"
        torch.save(reference.state_dict(), pth)
        start = time.perf_counter()
        out = convert_weights("torchvision", pth, args.arch, Path(work) / "run")
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"convert-weights {args.arch}: {seconds:.1f} s, run directory {size / 2**20:.0f} MiB")
        config = load_config(out / "config.yaml", resize)
        models = {
            precision: kmask.load_model(out, precision=precision).model
            for precision in args.precision
        }
    parameters = sum(int(np.prod(v.shape)) for v in next(iter(models.values())).weights)
    print(f"converted parameters: {parameters:,}")

    image = np.random.default_rng(0).integers(0, 256, (*args.size, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float()
    with torch.no_grad():
        resized = reference.transform([tensor])[0]
        torch_detections = len(reference([tensor])[0]["boxes"])
    print(
        f"image {args.size[0]}x{args.size[1]}, min_size {args.min_size}, max_size "
        f"{args.max_size}; same run, batch 1, median of {args.repeats}:"
    )
    print(
        f"  torchvision resized to {'x'.join(map(str, resized.image_sizes[0]))}, padded to "
        f"{'x'.join(map(str, resized.tensors.shape[-2:]))}"
    )

    kmask_s = {}
    for precision, model in models.items():
        predictor = Predictor(
            model, config.data, config.eval.mask_threshold, config.eval.mask_paste
        )
        features = predictor.features_for_image(image)
        if precision == args.precision[0]:
            print(
                f"  kmask resized to {'x'.join(map(str, features['image_size'][0].numpy()))}, "
                f"padded to {'x'.join(map(str, features['images'].shape[1:3]))}"
            )
        detections = int(predictor.predict_batch(features)["num_detections"][0])
        model_s, kmask_s[precision] = _kmask_seconds(predictor, features, args.repeats)
        print(
            f"  kmask {precision:>8} (TensorFlow {tf.__version__}, policy "
            f"{model.dtype_policy.name}): {kmask_s[precision]:.3f} s/image with masks pasted "
            f"({model_s:.3f} s model alone), {detections} detections above its score "
            "threshold (mask head on 100 slots)"
        )

    def run_torch() -> None:
        with torch.no_grad():
            reference([tensor])

    torch_s = _median_seconds(run_torch, args.repeats)
    print(
        f"  torchvision {torchvision.__version__} (torch {torch.__version__}) float32: "
        f"{torch_s:.3f} s/image with masks pasted, {torch_detections} detections (mask head "
        "on those)"
    )
    if "bfloat16" in kmask_s:
        print(f"  kmask-bfloat16 / torchvision-float32: {_ratio(kmask_s['bfloat16'], torch_s)}")
        if "float32" in kmask_s:
            print(
                f"  kmask-bfloat16 / kmask-float32: "
                f"{_ratio(kmask_s['bfloat16'], kmask_s['float32'])}"
            )
    if "float32" in kmask_s:
        print(f"  kmask-float32 / torchvision-float32: {_ratio(kmask_s['float32'], torch_s)}")


if __name__ == "__main__":
    main()
