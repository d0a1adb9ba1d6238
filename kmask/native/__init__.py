"""Building and loading the native (C++/CUDA) RoIAlign op (``custom_ops``): compiler flags
per CPU, the build cache, remembered failures, and the status ``kmask info`` prints.

It sits below ``kmask.ops`` (whose ``roi_align`` loads the op through it) and imports
nothing else of kmask but ``kmask.errors``.
"""
