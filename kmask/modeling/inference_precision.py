"""``InferencePrecision``: the float type a model computes in at inference, and what
``auto`` picks on this machine."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from kmask.config import PRECISIONS

# The Keras dtype policy each precision builds the model under: variables stay float32
# (checkpoints load as they are), layers compute in the precision.
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 matrix arithmetic.
_BFLOAT16_CPU_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


@dataclasses.dataclass(frozen=True)
class InferencePrecision:
    """A resolved inference precision and why it was chosen.

    Under ``bfloat16`` (or ``float16``) the model is built with Keras' ``mixed_bfloat16``
    (``mixed_float16``) policy: its weights stay float32 and are cast per layer; the
    convolutions, dense layers, RoIAlign (which accumulates in float32 inside) and the head
    activations run in bfloat16. What stays float32 whatever the precision: the input
    normalization (the backbone's first convolution casts its output), anchors, the
    logits and box deltas of the RPN, box and mask heads (cast to float32 before their
    softmax, sigmoid and box decoding), box decoding and clipping, NMS, score
    thresholds, the outputs (``detection_boxes``, ``detection_scores``, the masks'
    probabilities, keypoints) and mask pasting.

    ``auto`` picks bfloat16 where it is native and fast: a GPU of compute capability 8.0
    or higher (Ampere and later), or a CPU with AMX-BF16 or AVX512-BF16 while oneDNN is
    on (TensorFlow's default on x86 Linux; its bfloat16 kernels without oneDNN are slower
    than float32, so ``TF_ENABLE_ONEDNN_OPTS=0`` makes ``auto`` pick float32); float32
    everywhere else.

    Attributes:
      name: ``float32``, ``bfloat16`` or ``float16``.
      reason: why (for ``kmask info`` and logs).
    """

    name: str
    reason: str

    @property
    def policy(self) -> str:
        """The Keras dtype policy name (``float32``, ``mixed_bfloat16``, ``mixed_float16``)."""
        return _POLICIES[self.name]

    @classmethod
    def resolve(cls, requested: str) -> InferencePrecision:
        """``requested`` (one of ``PRECISIONS``) resolved on this machine.

        Raises:
          ValueError: an unknown precision, naming the choices, or float16 without a GPU.
        """
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
        if requested == "float16" and not tf.config.list_physical_devices("GPU"):
            raise ValueError(
                "precision float16 needs a GPU: TensorFlow's float16 CPU kernels are far "
                "slower than float32 (a 256-px image ran over 16 minutes); use bfloat16 or "
                "float32 on a CPU"
            )
        if requested != "auto":
            return cls(requested, "asked for")
        return cls.auto()

    @classmethod
    def auto(cls) -> InferencePrecision:
        """What ``auto`` picks here (see the class docstring)."""
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            capability = details.get("compute_capability") or (0, 0)
            name = details.get("device_name", "GPU 0")
            if tuple(capability) >= (8, 0):
                return cls("bfloat16", f"{name} (compute capability {capability[0]}."
                           f"{capability[1]}) computes bfloat16 natively")  # fmt: skip
            return cls("float32", f"{name} (compute capability {capability[0]}.{capability[1]}) "
                       "has no native bfloat16")  # fmt: skip
        flags = cpu_flags()
        native = [label for flag, label in _BFLOAT16_CPU_FLAGS.items() if flag in flags]
        if not native:
            return cls("float32", "the CPU has neither AMX-BF16 nor AVX512-BF16")
        if not onednn_enabled():
            return cls(
                "float32",
                f"the CPU has {' and '.join(native)} but oneDNN is off ({ONEDNN_VARIABLE}="
                f"{os.environ.get(ONEDNN_VARIABLE)}): TensorFlow's bfloat16 kernels without "
                "oneDNN are slower than float32",
            )
        return cls("bfloat16", f"the CPU has {' and '.join(native)} and oneDNN is on")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN kernels (decided at import from
    ``TF_ENABLE_ONEDNN_OPTS``; on by default on x86-64 Linux)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
