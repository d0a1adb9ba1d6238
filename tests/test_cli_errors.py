"""Usage errors of the ``kmask`` command are caught before any work, naming the argument."""

from __future__ import annotations

import pytest

from kmask.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--run", "R", "--max-images", "-5"], "--max-images must be positive"),
        (["evaluate", "--run", "R", "--batch-size", "0"], "--batch-size must be positive"),
        (["evaluate", "--run", "R", "--results-out", "/nowhere/r.json"], "does not exist"),
        (["evaluate", "--run", "R", "--metrics-out", "."], "is a folder"),
        (["predict", "--run", "R", "x.png", "--limit", "-1"], "--limit must be positive"),
        (["predict", "--run", "R", "x.png", "--score-threshold", "2"], "--score-threshold"),
    ],
)
def test_usage_errors_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("")
    assert main(["train", "--config", "x.yaml", "--out", str(out)]) == 2
    assert f"--out {out} is a file" in capsys.readouterr().err
    assert main(["predict", "--run", "R", "x.png", "--out", str(out)]) == 2
    assert f"--out {out} is a file" in capsys.readouterr().err


def test_verbose_flag():
    assert build_parser().parse_args(["--verbose", "info"]).verbose
    assert not build_parser().parse_args(["info"]).verbose


def test_no_tensorflow_start_up_lines():
    """``kmask info`` in a fresh process prints its report and none of TensorFlow's
    start-up log lines (the parser's converter list imports TensorFlow: quietly)."""
    import os
    import subprocess
    import sys

    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KMASK_VERBOSE")
    }
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from kmask.cli import main; sys.exit(main())", "info"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TensorFlow" in result.stdout
    for marker in ("cpu_feature_guard", "cudart_stub", "absl::InitializeLog", "oneDNN"):
        assert marker not in result.stderr, result.stderr[-2000:]
