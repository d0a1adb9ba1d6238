"""``Determinism``: the process settings behind ``train.deterministic``."""

from __future__ import annotations

import os
import types

import tensorflow as tf

# Private, but the only way to read this switch; it exists since TensorFlow 2.9.
from tensorflow.python.framework import config as framework_config

from kmask.errors import ConfigError
from kmask.modeling import inference_precision

# TensorFlow reads this variable once, when it is imported (kmask.cli sets it for
# ``kmask train`` before importing TensorFlow).
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


class Determinism:
    """What ``train.deterministic`` switches on, for the duration of a ``with`` block.

    With ``enabled``, two training runs of one configuration on one machine are
    bit-identical, and a run killed at any moment and resumed ends bit-identical to one
    never interrupted (docs/training.md, "Exact resume"), whatever else runs on the
    machine. kmask's own part (stateless sampling and augmentation, the stream position in
    every checkpoint) needs no switch; TensorFlow's needs three:

    - **Op determinism** (``tf.config.experimental.enable_op_determinism()``): kernels
      with a nondeterministic implementation (GPU scatters with atomics, among them the
      custom RoIAlign op's CUDA gradient) take a deterministic one or raise, and
      ``tf.data`` keeps its order. It is a process-wide switch: the block restores the
      previous state when it ends.
    - **oneDNN off**: TensorFlow's oneDNN CPU kernels (its default on Intel CPUs, off on
      AMD ones) gave two runs started side by side different results from the first step.
      ``TF_ENABLE_ONEDNN_OPTS`` is read when TensorFlow is imported, so it cannot be
      switched here: ``kmask train`` sets it to ``0`` before importing TensorFlow when the
      configuration asks for determinism, and a Python program must do the same
      (``os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"`` before ``import tensorflow``).
      Entering the block with oneDNN on raises ``ConfigError`` naming the setting and the
      fix.
    - **The same intra-op thread count**: Eigen splits a reduction (a convolution's
      gradient, a matrix product) among the intra-op threads, so another count rounds
      differently. The count is fixed for a process (other load on the machine changes
      nothing, measured), but it follows the CPUs the process may use (``taskset``, a
      container's CPU set), ``TF_NUM_INTRAOP_THREADS`` and
      ``tf.config.threading.set_intra_op_parallelism_threads``. ``intra_op_threads()``
      reports it; the trainer saves it with every checkpoint and warns when a run
      resumes with another count.

    Usage (what ``Trainer.train`` does)::

        with Determinism(config.train.deterministic):
            model = build_mask_rcnn(config.model)
            model.fit(...)

    Args:
      enabled: ``train.deterministic``; False makes the block do nothing.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._was_enabled = False

    @staticmethod
    def onednn_enabled() -> bool:
        """Whether this process's TensorFlow runs oneDNN kernels (decided at import)."""
        return inference_precision.onednn_enabled()

    @staticmethod
    def intra_op_threads() -> int:
        """The size of TensorFlow's intra-op thread pool in this process: the configured
        count, else ``TF_NUM_INTRAOP_THREADS``, else the CPUs the process may run on."""
        configured = tf.config.threading.get_intra_op_parallelism_threads()
        if configured > 0:
            return configured
        variable = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
        if variable.isdigit() and int(variable) > 0:
            return int(variable)
        return len(os.sched_getaffinity(0))

    def __enter__(self) -> Determinism:
        if not self.enabled:
            return self
        if self.onednn_enabled():
            value = os.environ.get(ONEDNN_VARIABLE)
            why = f"{ONEDNN_VARIABLE}={value}" if value else "TensorFlow's default on Intel CPUs"
            raise ConfigError(
                "train.deterministic is on, but TensorFlow was imported with oneDNN on "
                f"({why}), whose kernels make two runs of one configuration differ; set "
                f"{ONEDNN_VARIABLE}=0 before TensorFlow is imported (kmask train does so "
                "unless the variable is set), or set train.deterministic=false"
            )
        self._was_enabled = framework_config.is_op_determinism_enabled()
        tf.config.experimental.enable_op_determinism()
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        if self.enabled and not self._was_enabled:
            framework_config.disable_op_determinism()
