"""Fixtures of the data tests; the data itself comes from ``tests.toy_data``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.toy_data import write_mixed_coco


@pytest.fixture
def mixed_coco(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """``toy_data.write_mixed_coco`` in a temporary folder: (json, images, masks)."""
    return write_mixed_coco(tmp_path)
