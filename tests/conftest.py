"""Shared test setup: quiet TensorFlow logs, deterministic seeds."""

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torchvision (the conversion tests' reference) crashes the process when it is imported
# after TensorFlow; import it first when it is installed.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
