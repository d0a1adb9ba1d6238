"""Shared test setup: quiet TensorFlow logs, deterministic seeds."""

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# train.deterministic (on by default) refuses a TensorFlow imported with oneDNN on, its
# default on Intel CPUs; TensorFlow reads the switch at import, so set it first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# torchvision (the conversion tests' reference) crashes the process when it is imported
# after TensorFlow; import it first when it is installed.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
