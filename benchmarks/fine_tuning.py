"""Fine-tuning to new classes against training from scratch, on shapes (prints both curves).

Writes a shapes dataset of classes the source model has never seen (default: pentagon,
hexagon, ellipse, rhombus; 200 training and 50 validation images), then trains
``configs/shapes_tiny.yaml`` on it twice with the same schedule, seeds and data order:
once initialized from ``--source`` (``train.init_from``: every weight by name, the
class-dependent layers re-initialized because the class count differs) and once from
scratch. The COCO mask and box AP on the validation images every ``--eval-every`` steps
are printed as a table and written to ``WORK/curves.json``.

The source is a run of ``kmask train`` on the ordinary shapes (circle, square, triangle),
for example the README's main job or a shorter one::

    kmask make-shapes --out data/shapes
    kmask train --config configs/shapes_tiny.yaml --out runs/shapes_src \\
        --set train.max_steps=800 --set "train.lr_steps=[600,700]"
    python benchmarks/fine_tuning.py --source runs/shapes_src --work runs/fine_tuning
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kmask.config import load_config  # noqa: E402
from kmask.data import ShapesDataset  # noqa: E402
from kmask.training import Trainer  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes_tiny.yaml"


def train_curve(work: Path, name: str, overrides: list[str]) -> dict[str, list[float]]:
    """Trains one run into ``work/name``; returns its steps, AP values and seconds."""
    config = load_config(CONFIG, overrides)
    start = time.perf_counter()
    history = Trainer(config, work / name, verbose=2).train()
    every = config.train.steps_per_epoch * config.train.eval_every_epochs
    return {
        "step": [every * (i + 1) for i in range(len(history["val_segm_AP"]))],
        "segm_AP": history["val_segm_AP"],
        "bbox_AP": history["val_bbox_AP"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="run directory of the source model")
    parser.add_argument("--work", required=True, help="folder for the data and the two runs")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each run")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    parser.add_argument(
        "--shapes", default="pentagon,hexagon,ellipse,rhombus", help="the new classes"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the new dataset")
    args = parser.parse_args()

    work = Path(args.work)
    shapes = args.shapes.split(",")
    data = work / "data"
    if not (data / "val.json").is_file():
        ShapesDataset(128, seed=args.seed, shapes=shapes).write(data, 200, 50, progress=False)
    common = [
        f"model.num_classes={len(shapes)}",
        f"train.json_path={data / 'train.json'}",
        f"train.images_dir={data}",
        f"eval.json_path={data / 'val.json'}",
        f"eval.images_dir={data}",
        f"train.max_steps={args.steps}",
        f"train.lr_steps=[{args.steps * 3 // 4}]",
        "train.warmup_steps=50",
        f"train.steps_per_epoch={args.eval_every}",
        "train.eval_every_epochs=1",
        f"train.checkpoint_every_steps={args.steps}",
        "train.num_visualizations=0",
    ]
    curves = {
        "fine-tuned": train_curve(
            work, "fine_tuned", [*common, f"train.init_from={Path(args.source).resolve()}"]
        ),
        "scratch": train_curve(work, "scratch", common),
    }
    (work / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    print(f"\nnew classes {shapes}, source {args.source}; COCO AP on 50 validation images")
    print(f"{'step':>6}  {'fine-tuned mask / box':>22}  {'scratch mask / box':>20}")
    tuned, scratch = curves["fine-tuned"], curves["scratch"]
    for i, step in enumerate(tuned["step"]):
        print(
            f"{step:>6}  {tuned['segm_AP'][i]:>12.3f} / {tuned['bbox_AP'][i]:.3f}"
            f"  {scratch['segm_AP'][i]:>10.3f} / {scratch['bbox_AP'][i]:.3f}"
        )
    print(f"seconds: fine-tuned {tuned['seconds']:.0f}, scratch {scratch['seconds']:.0f}")


if __name__ == "__main__":
    main()
