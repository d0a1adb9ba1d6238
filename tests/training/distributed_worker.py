"""A training process of the distribution tests: ``python -m tests.training.distributed_worker
--strategy NAME --out DIR --shapes DIR --dump FILE.npz [KEY=VALUE ...]``.

Selects the strategy first (logical CPU devices, TF_CONFIG), trains the tiny model with
``Trainer`` and dumps the initial and final trainable weights, the step, the replica
count, whether all replicas hold identical weights, and the image ids each replica gets
from the first distributed batch.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--dump", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from kmask.training.strategy import select_strategy

    strategy = select_strategy(args.strategy, cpu_devices=2)

    from pathlib import Path

    import keras
    import numpy as np

    from kmask.training import Trainer
    from tests.toy_data import tiny_config

    config = tiny_config(Path(args.shapes), *args.overrides)
    initial = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if not initial:
                initial.update(
                    {v.path: np.array(v.numpy()) for v in self.model.trainable_variables}
                )

    trainer = Trainer(config, args.out, strategy=strategy, verbose=0, callbacks=[Snapshot()])
    trainer.train()
    model = trainer.model
    identical = all(
        all(
            np.array_equal(np.asarray(part), np.asarray(v.value.values[0]))
            for part in v.value.values
        )
        for v in model.trainable_variables
        if hasattr(v.value, "values")
    )
    # The first global batch of the trainer's pipeline as this process's replicas get it.
    distributed = strategy.experimental_distribute_dataset(trainer.dataset())
    features, _ = next(iter(distributed))
    replica_ids = [
        np.asarray(ids).tolist()
        for ids in strategy.experimental_local_results(features["image_id"])
    ]
    np.savez(
        args.dump,
        step=int(model.optimizer.iterations.numpy()),
        replicas=strategy.num_replicas_in_sync,
        identical=identical,
        replica_ids=np.array(replica_ids, dtype=object),
        names=np.array(sorted(initial)),
        **{f"initial/{k}": v for k, v in initial.items()},
        **{f"final/{v.path}": np.asarray(v.numpy()) for v in model.trainable_variables},
    )


if __name__ == "__main__":
    main()
