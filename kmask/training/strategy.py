"""Choosing the ``tf.distribute`` strategy of a training run.

- ``"auto"``: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster of
  several tasks, else ``MirroredStrategy`` over all GPUs when more than one is visible,
  else the default strategy (one device).
- ``"mirrored"``: ``MirroredStrategy`` over all GPUs, or, without GPUs, over
  ``cpu_devices`` logical CPU devices (for testing replication on a laptop or CI).
- ``"multi_worker"``: ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (required).
- ``"default"``: one device, no replication.

Strategies must be created before TensorFlow runs anything else in the process (logical
devices and collective ops are configured at runtime start), so ``kmask train`` selects
the strategy first.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return config


def _cluster_size(config: dict) -> int:
    cluster = config.get("cluster", {})
    return sum(len(addresses) for addresses in cluster.values() if isinstance(addresses, list))


def configure_cpu_devices(count: int) -> None:
    """Splits the first physical CPU into ``count`` logical devices.

    Raises:
      RuntimeError: when TensorFlow's runtime is already initialized with another layout.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        # Listing logical devices starts the runtime: only ask once it has started anyway.
        if len(tf.config.list_logical_devices("CPU")) == count:
            return
        raise RuntimeError(
            f"cannot split the CPU into {count} logical devices after TensorFlow has "
            f"started; select the strategy first thing in the process ({error})"
        ) from None


def select_strategy(name: str = "auto", cpu_devices: int = 2) -> tf.distribute.Strategy:
    """The strategy ``name`` (see the module docstring).

    Args:
      name: one of ``STRATEGIES``.
      cpu_devices: logical CPU devices for ``"mirrored"`` on a machine without GPUs.

    Raises:
      ValueError: unknown name, bad ``TF_CONFIG``, ``"multi_worker"`` without a cluster.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    tf_config = _tf_config()
    if name == "multi_worker" or (name == "auto" and _cluster_size(tf_config) > 1):
        if _cluster_size(tf_config) < 1 or "task" not in tf_config:
            raise ValueError(
                "--strategy multi_worker needs TF_CONFIG with 'cluster' and 'task', e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        if cpu_devices < 1:
            raise ValueError(f"cpu_devices must be >= 1, got {cpu_devices}")
        configure_cpu_devices(cpu_devices)
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and metrics: always outside
    multi-worker training; there, the ``chief`` task, or worker 0 when there is none."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
