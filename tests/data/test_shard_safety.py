"""Shards that cannot be trusted are refused by name; a killed conversion's leftovers go."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kmask.data import COCODataset, DataError, ShardDataset, ShardWriter


def test_truncated_shard_is_refused_by_name(mixed_coco, tmp_path):
    out = tmp_path / "out"
    paths = ShardWriter(out, num_shards=2).write(COCODataset(*mixed_coco[:2]), progress=False)
    ShardDataset(str(out / "coco-*.tfrecord"))  # intact: accepted
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match="truncated TFRecord shard") as error:
        ShardDataset(str(out / "coco-*.tfrecord"))
    assert str(paths[1]) in str(error.value)


def test_stale_temporary_shards_of_dead_processes_are_removed(mixed_coco, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = out / f".coco-00000-of-00001.tfrecord.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"half a shard")
    other = out / ".other-00000-of-00001.tfrecord.tmp-1"  # another prefix: left alone
    other.write_bytes(b"x")
    ShardWriter(out, num_shards=1).write(COCODataset(*mixed_coco[:2]), progress=False)
    assert not stale.exists() and other.exists()
