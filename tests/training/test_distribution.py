"""Replicated training on the CPU: MirroredStrategy over two logical devices and
MultiWorkerMirroredStrategy over two local worker processes (127.0.0.1).

Two identical images make every replica's loss equal to the single-device loss on the
global batch, and the sampling settings take every anchor and every RoI (no random
choice), so replicated and single-device training must produce the same weights: this
checks both the split of the global batch and the scaling of the summed gradients.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.toy_data import write_shapes

_ROOT = Path(__file__).resolve().parents[2]
_DETERMINISTIC = [
    "train.max_steps=2",
    "train.steps_per_epoch=2",
    "train.warmup_steps=0",
    "train.lr_steps=[100]",
    "train.checkpoint_every_steps=100",
    "data.horizontal_flip=false",
    # Every labelled anchor (1023 at 64 px) and every proposal + ground truth is sampled.
    "model.rpn.batch_size_per_image=1024",
    "model.rpn.positive_fraction=1.0",
    "model.roi_heads.batch_size_per_image=128",
    "model.roi_heads.positive_fraction=1.0",
]


@pytest.fixture(scope="module")
def twin_shapes(tmp_path_factory) -> Path:
    """Shapes data whose training set is one image listed twice (ids 1 and 2)."""
    root = write_shapes(tmp_path_factory.mktemp("twins"), num_train=1, num_val=1)
    data = json.loads((root / "train.json").read_text())
    image = dict(data["images"][0], id=2)
    twins = [dict(a, id=a["id"] + 1000, image_id=2) for a in data["annotations"]]
    data["images"].append(image)
    data["annotations"].extend(twins)
    (root / "train.json").write_text(json.dumps(data))
    return root


def _worker(
    strategy: str,
    out: Path,
    shapes: Path,
    dump: Path,
    env: dict | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.training.distributed_worker",
            "--strategy",
            strategy,
            "--out",
            str(out),
            "--shapes",
            str(shapes),
            "--dump",
            str(dump),
            *_DETERMINISTIC,
            *extra,
        ],
        cwd=_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 420) -> None:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        _kill([process])
    assert process.returncode == 0, output[-4000:]


def _kill(processes: list[subprocess.Popen]) -> None:
    """SIGKILL whatever still runs: a worker whose peer died waits in a collective forever
    and ignores SIGTERM, so a failed test must not leave it behind."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=True) as data:
        return {key: data[key] for key in data.files}


def _assert_same_training(reference: dict, other: dict) -> None:
    names = list(reference["names"])
    assert list(other["names"]) == names
    for name in names:
        np.testing.assert_array_equal(other[f"initial/{name}"], reference[f"initial/{name}"])
    # Compare the weight updates: equal up to float summation order.
    largest = max(np.abs(reference[f"final/{n}"] - reference[f"initial/{n}"]).max() for n in names)
    assert largest > 0
    for name in names:
        ours = other[f"final/{name}"] - other[f"initial/{name}"]
        theirs = reference[f"final/{name}"] - reference[f"initial/{name}"]
        np.testing.assert_allclose(ours, theirs, atol=1e-3 * largest, err_msg=name)


@pytest.fixture(scope="module")
def single_device(twin_shapes, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("single")
    _finish(_worker("default", root / "run", twin_shapes, root / "dump.npz"))
    return _load(root / "dump.npz")


def test_mirrored_two_cpu_devices(twin_shapes, single_device, tmp_path):
    _finish(_worker("mirrored", tmp_path / "run", twin_shapes, tmp_path / "dump.npz"))
    mirrored = _load(tmp_path / "dump.npz")
    assert int(mirrored["replicas"]) == 2 and int(single_device["replicas"]) == 1
    assert int(mirrored["step"]) == int(single_device["step"]) == 2
    assert bool(mirrored["identical"])
    # The global batch of 2 is split one image per replica.
    assert sorted(len(ids) for ids in mirrored["replica_ids"]) == [1, 1]
    assert sorted(sum(mirrored["replica_ids"].tolist(), [])) == [1, 2]
    _assert_same_training(single_device, mirrored)
    assert (tmp_path / "run" / "checkpoints" / "ckpt-00000002.weights.h5").is_file()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_local_processes(twin_shapes, single_device, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            _worker(
                "auto",
                tmp_path / "run",
                twin_shapes,
                tmp_path / f"dump{index}.npz",
                env={"TF_CONFIG": json.dumps(tf_config)},
            )
        )
    try:
        for process in processes:
            _finish(process)
    finally:
        _kill(processes)
    dumps = [_load(tmp_path / f"dump{i}.npz") for i in range(2)]
    for dump in dumps:
        assert int(dump["replicas"]) == 2 and int(dump["step"]) == 2
        assert len(dump["replica_ids"]) == 1 and len(dump["replica_ids"][0]) == 1
    # Each worker gets its own half of the global batch, and both end with equal weights.
    assert sorted([*dumps[0]["replica_ids"][0], *dumps[1]["replica_ids"][0]]) == [1, 2]
    for name in dumps[0]["names"]:
        np.testing.assert_array_equal(dumps[0][f"final/{name}"], dumps[1][f"final/{name}"])
    _assert_same_training(single_device, dumps[0])
    # Only the chief (worker 0) wrote the run directory.
    assert (tmp_path / "run" / "checkpoints" / "ckpt-00000002.weights.h5").is_file()
