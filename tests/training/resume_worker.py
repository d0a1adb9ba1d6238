"""A training process of the exact-resume test: ``python -m tests.training.resume_worker
--out DIR --shapes DIR [--dump FILE.npz] [--kill-in-save STEP] [KEY=VALUE ...]``.

Trains the tiny model with ``Trainer(...).train(resume=True)``, printing ``step N`` after
each step. ``--kill-in-save STEP`` makes the process SIGKILL itself in the middle of the
checkpoint write of that step: the temporary file is complete, it is not renamed into
place yet. ``--dump`` writes every model and optimizer variable at the end (``path`` ->
array, the optimizer's under ``optimizer/``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# train.deterministic (on in the tiny configuration) needs oneDNN off, which TensorFlow
# reads when it is imported (kmask.training.Determinism).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

_ROOT = Path(__file__).resolve().parents[2]


def spawn(shapes: Path, out: Path, implementation: str, *arguments: str) -> subprocess.Popen:
    """This worker in a subprocess with RoIAlign ``implementation`` (``KMASK_ROI_ALIGN``)
    and ``arguments`` (options, then ``KEY=VALUE`` overrides); its output (stdout and
    stderr together) is read as text from ``stdout``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.training.resume_worker",
            "--shapes",
            str(shapes),
            "--out",
            str(out),
            *arguments,
        ],
        cwd=_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KMASK_ROI_ALIGN": implementation},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--dump")
    parser.add_argument("--kill-in-save", type=int)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import keras
    import numpy as np

    from kmask.runs.checkpoints import checkpoint_name
    from kmask.training import Trainer
    from tests.toy_data import tiny_config

    if args.kill_in_save is not None:
        replace = os.replace
        victim = checkpoint_name(args.kill_in_save)

        def replace_or_die(source: str, destination: str) -> None:
            if Path(destination).name == victim:
                os.kill(os.getpid(), signal.SIGKILL)
            replace(source, destination)

        os.replace = replace_or_die

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            print(f"step {int(self.model.optimizer.iterations.numpy())}", flush=True)

    config = tiny_config(Path(args.shapes), *args.overrides)
    trainer = Trainer(config, args.out, verbose=0, callbacks=[Progress()])
    trainer.train(resume=True)
    if args.dump:
        model = trainer.model
        np.savez(
            args.dump,
            **{v.path: np.asarray(v.numpy()) for v in model.weights},
            **{f"optimizer/{v.path}": np.asarray(v.numpy()) for v in model.optimizer.variables},
        )
    print("done", flush=True)


if __name__ == "__main__":
    main()
