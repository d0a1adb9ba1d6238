"""The README's main job as CI runs it when time allows: make the shapes dataset, train
``configs/shapes_tiny.yaml`` from scratch, predict and evaluate; the acceptance is mask AP
and box AP >= 0.5 (COCO AP@[.5:.95] through pycocotools) on the validation split.
About 7 minutes on 2 cores."""

import json
from pathlib import Path

import pytest

from tests.cli_runner import CONFIGS, assert_ok, run_kmask

TIMEOUT = 3600  # seconds per command: training takes 7-25 minutes on 2 cores, by machine load


@pytest.mark.slow
def test_readme_main_job_reaches_the_acceptance_figures(tmp_path: Path) -> None:
    # The README's commands, run in a fresh directory (the config reads data/shapes).
    assert_ok(run_kmask("make-shapes", "--out", "data/shapes", cwd=tmp_path, timeout=TIMEOUT))
    assert_ok(
        run_kmask(
            "train",
            "--config",
            str(CONFIGS / "shapes_tiny.yaml"),
            "--out",
            "run",
            "--resume",
            cwd=tmp_path,
            timeout=TIMEOUT,
        )
    )
    assert_ok(
        run_kmask(
            "predict",
            "--run",
            "run",
            "data/shapes/val",
            "--limit",
            "2",
            cwd=tmp_path,
            timeout=TIMEOUT,
        )
    )
    assert len(list((tmp_path / "run" / "predictions").glob("*.png"))) == 2
    output = assert_ok(run_kmask("evaluate", "--run", "run", cwd=tmp_path, timeout=TIMEOUT))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print(output)
    assert metrics["num_images"] == 50
    assert metrics["segm_AP"] >= 0.5, metrics
    assert metrics["bbox_AP"] >= 0.5, metrics
