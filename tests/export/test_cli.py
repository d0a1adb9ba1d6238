"""``kmask export`` as a user runs it: a run directory in, a servable version folder out."""

from __future__ import annotations

import json

from tests.cli_runner import assert_ok, run_kmask
from tests.export.conftest import write_run_directory


def test_export_run_directory_and_refuse_overwrite(model, config, tmp_path):
    run = write_run_directory(tmp_path / "run", model, config)
    out = tmp_path / "serving"
    stdout = assert_ok(run_kmask("export", "--run", str(run), "--out", str(out), cwd=tmp_path))
    assert str(out / "1") in stdout
    assert (out / "1" / "saved_model.pb").is_file()
    assert (out / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    labels = json.loads((out / "1" / "assets" / "categories.json").read_text())
    assert [c["id"] for c in labels] == [3, 7, 11]

    again = run_kmask(
        "export", "--run", str(run), "--out", str(out), "--version", "1", cwd=tmp_path
    )
    assert again.returncode == 2
    assert f"kmask export: error: {out / '1'} already exists" in again.stderr
    assert "--overwrite" in again.stderr

    missing = run_kmask("export", "--run", str(tmp_path / "nope"), "--out", str(out), cwd=tmp_path)
    assert missing.returncode == 2
    assert str(tmp_path / "nope") in missing.stderr

    bad = run_kmask("export", "--run", str(run), "--out", str(out), "--version", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--version" in bad.stderr
    assert sorted(p.name for p in out.iterdir()) == ["1"]
