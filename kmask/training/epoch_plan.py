"""The ``model.fit`` calls of a run from a step to ``train.max_steps``."""

from __future__ import annotations


def epoch_plan(start_step: int, max_steps: int, steps_per_epoch: int) -> list[tuple[int, int, int]]:
    """The ``fit`` calls that take training from ``start_step`` to ``max_steps``.

    Keras epochs have a fixed length, so a run resumed in the middle of an epoch first
    finishes that epoch with a shorter ``fit``, and a ``max_steps`` that is not a multiple
    of ``steps_per_epoch`` ends with a short epoch.

    Returns:
      ``[(initial_epoch, epochs, steps_per_epoch), ...]`` arguments of ``model.fit``.
    """
    plan = []
    step = start_step
    while step < max_steps:
        epoch = step // steps_per_epoch
        if step % steps_per_epoch or max_steps - step < steps_per_epoch:
            count = min(steps_per_epoch - step % steps_per_epoch, max_steps - step)
            plan.append((epoch, epoch + 1, count))
            step += count
        else:
            full = (max_steps - step) // steps_per_epoch
            plan.append((epoch, epoch + full, steps_per_epoch))
            step += full * steps_per_epoch
    return plan
