"""The README's main job as CI runs it when time allows: make the shapes dataset, train
``configs/shapes_tiny.yaml`` from scratch, predict and evaluate; the acceptance is mask AP
and box AP >= 0.5 (COCO AP@[.5:.95] through pycocotools) on the validation split.
About 7 minutes on 2 cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_end_to_end import _ok

_ROOT = Path(__file__).resolve().parents[1]


def kmask(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from kmask.cli import main; sys.exit(main())", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.mark.slow
def test_readme_main_job_reaches_the_acceptance_figures(tmp_path: Path) -> None:
    # The README's commands, run in a fresh directory (the config reads data/shapes).
    _ok(kmask("make-shapes", "--out", "data/shapes", cwd=tmp_path))
    _ok(
        kmask(
            "train",
            "--config",
            str(_ROOT / "configs" / "shapes_tiny.yaml"),
            "--out",
            "run",
            "--resume",
            cwd=tmp_path,
        )
    )
    _ok(kmask("predict", "--run", "run", "data/shapes/val", "--limit", "2", cwd=tmp_path))
    assert len(list((tmp_path / "run" / "predictions").glob("*.png"))) == 2
    output = _ok(kmask("evaluate", "--run", "run", cwd=tmp_path))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print(output)
    assert metrics["num_images"] == 50
    assert metrics["segm_AP"] >= 0.5, metrics
    assert metrics["bbox_AP"] >= 0.5, metrics
