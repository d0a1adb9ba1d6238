"""kmask vs torchvision inference on the same converted model, same image, same run.

Builds torchvision's ``maskrcnn_resnet50_fpn`` (random weights unless ``--pth`` names a
downloaded checkpoint), saves it as a ``.pth``, runs ``kmask convert-weights``' code on it
(file in, run directory out), and times both libraries on one image at the papers' test
size (shorter side 800). Prints the conversion time, the run directory's size and the
median seconds per image of each library (CPU threads as the machine gives them).

    python benchmarks/converted_inference.py [--arch maskrcnn_resnet50_fpn] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: F401  (before TensorFlow: torchvision after TF crashes)

import kmask  # noqa: E402
from kmask.config import load_config  # noqa: E402
from kmask.convert import convert_weights  # noqa: E402
from kmask.evaluation import Predictor  # noqa: E402


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up (graph tracing, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="maskrcnn_resnet50_fpn")
    parser.add_argument("--pth", default=None, help="a torchvision checkpoint to load")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), help="image H W")
    args = parser.parse_args()

    reference = getattr(torchvision.models.detection, args.arch)(
        weights=None, weights_backbone=None
    ).eval()
    if args.pth:
        reference.load_state_dict(torch.load(args.pth, map_location="cpu", weights_only=True))
    with tempfile.TemporaryDirectory() as work:
        pth = Path(work) / f"{args.arch}.pth"
        torch.save(reference.state_dict(), pth)
        start = time.perf_counter()
        out = convert_weights("torchvision", pth, args.arch, Path(work) / "run")
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"convert-weights {args.arch}: {seconds:.1f} s, run directory {size / 2**20:.0f} MiB")
        config = load_config(out / "config.yaml")
        model = kmask.load_model(out)
    parameters = sum(int(np.prod(v.shape)) for v in model.weights)
    print(f"converted parameters: {parameters:,}")

    image = np.random.default_rng(0).integers(0, 256, (*args.size, 3), dtype=np.uint8)
    predictor = Predictor(model, config.data)
    features = predictor.features_for_image(image)
    tensor = torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float()

    def run_torch() -> None:
        with torch.no_grad():
            reference([tensor])

    kmask_s = _median_seconds(lambda: predictor.predict_batch(features), args.repeats)
    torch_s = _median_seconds(run_torch, args.repeats)
    print(f"image {args.size[0]}x{args.size[1]} resized to shorter side 800, same run:")
    print(f"  kmask (TensorFlow {__import__('tensorflow').__version__}): {kmask_s:.2f} s/image")
    print(
        f"  torchvision {torchvision.__version__} (torch {torch.__version__}): "
        f"{torch_s:.2f} s/image"
    )


if __name__ == "__main__":
    main()
