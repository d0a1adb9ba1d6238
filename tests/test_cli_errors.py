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
