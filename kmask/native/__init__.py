"""Building and loading the native (C++/CUDA) RoIAlign op.

- ``cpu_variant``: the CPU build modes (``KMASK_CPU_BUILD``), their instruction-set variants
  and the one the running CPU loads;
- ``compiler``: the compiler and ``nvcc`` commands that build a folder of libraries;
- ``custom_ops``: the build cache, remembered failures, loading, and the status
  ``kmask info`` prints (``build``, ``load``, ``status``).

It sits below ``kmask.ops`` (whose ``roi_align`` loads the op through ``custom_ops``) and
imports nothing else of kmask but ``kmask.errors``.
"""
