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


def test_every_command_and_option_has_help():
    """``kmask --help`` lists a help line for every command, and each command's ``--help``
    one for every option (``export --format`` and ``info`` once had none)."""
    import argparse

    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    listed = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(listed) == set(commands.choices) and all(listed.values()), listed
    for name, parser in commands.choices.items():
        missing = [
            action.option_strings or action.dest
            for action in parser._actions
            if not action.help and not isinstance(action, argparse._HelpAction)
        ]
        assert not missing, f"kmask {name}: no help for {missing}"


def test_readme_names_only_files_that_exist():
    """Every repository file the README cites in backticks (a ``.md`` file, or a path in one
    of the repository's folders) exists: it once cited a DESIGN.md the project does not
    have. Files that runs write (``runs/``, ``data/``, ``exports/``) are not cited files."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    names = re.findall(r"`([\w./-]+\.(?:md|py|yaml|ipynb|toml))`", (root / "README.md").read_text())
    folders = ("benchmarks/", "configs/", "docs/", "kmask/", "notebooks/", "tests/", ".ci/")
    cited = {name for name in names if name.endswith(".md") or name.startswith(folders)}
    assert {"docs/architecture.md", "configs/shapes_tiny.yaml"} <= cited
    missing = sorted(name for name in cited if not (root / name).exists())
    assert not missing, missing


def test_set_without_equals_is_the_commands_usage_error(capsys):
    """``--set train.max_steps 150`` stops with ``train``'s usage naming the argument,
    not with the top-level usage."""
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--config", "x.yaml", "--out", "o", "--set", "train.max_steps", "150"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kmask train ")
    assert "kmask train: error: argument --set: expected KEY=VALUE, got 'train.max_steps'" in err
