"""Absurd RoIAlign arguments: a clear error naming the argument, never a crash or a hang.

The custom op once segfaulted (sampling_ratio 2**31-1), hung uninterruptibly (46341 and
up: the grid's square overflows an int) and aborted with std::bad_alloc (large output sizes
with large ratios); it runs in a subprocess with a timeout so that a regression fails the
test instead of killing or stalling the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from kmask.native import custom_ops
from kmask.ops.roi_align import multi_level_roi_align, roi_align
from kmask.ops.roi_align_tf import roi_align_tf

_CUSTOM_OP_SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf
    from kmask.native import custom_ops

    op = custom_ops.load().kmask_roi_align
    features = tf.ones([1, 8, 8, 2])
    boxes = tf.constant([[0.0, 0.0, 4.0, 4.0]])
    indices = tf.constant([0])
    cases = [
        dict(pooled_height=7, pooled_width=7, sampling_ratio=2**31 - 1),
        dict(pooled_height=7, pooled_width=7, sampling_ratio=46341),
        dict(pooled_height=7, pooled_width=7, sampling_ratio=-3),
        dict(pooled_height=2**20, pooled_width=2**20, sampling_ratio=4096),
        dict(pooled_height=0, pooled_width=7, sampling_ratio=0),
    ]
    for case in cases:
        try:
            op(features, boxes, indices, **case)
            print("NO ERROR", case)
        except tf.errors.InvalidArgumentError as error:
            print("InvalidArgument:", error.message.splitlines()[0])
    """
)


@pytest.mark.skipif(custom_ops.load() is None, reason="custom op not built")
def test_custom_op_refuses_absurd_arguments_in_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-c", _CUSTOM_OP_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 5 and all(line.startswith("InvalidArgument") for line in lines), lines
    assert all("sampling_ratio" in line for line in lines[:3])
    assert all("output_size" in line for line in lines[3:])


@pytest.mark.parametrize("implementation", ["tf", "custom"])
@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"sampling_ratio": 2**31 - 1}, "sampling_ratio"),
        ({"sampling_ratio": -1}, "sampling_ratio"),
        ({"output_size": 2**20}, "output_size"),
        ({"output_size": (7, 0)}, "output_size"),
    ],
)
def test_dispatcher_refuses_absurd_arguments(implementation, kwargs, argument):
    if implementation == "custom" and custom_ops.load() is None:
        pytest.skip("custom op not built")
    arguments = {"output_size": 7, "sampling_ratio": 0, **kwargs}
    with pytest.raises(ValueError, match=argument):
        roi_align(
            tf.ones([1, 8, 8, 2]),
            tf.constant([[0.0, 0.0, 4.0, 4.0]]),
            tf.constant([0]),
            implementation=implementation,
            **arguments,
        )
    with pytest.raises(ValueError, match=argument):
        multi_level_roi_align(
            {"P2": tf.ones([1, 8, 8, 2])},
            tf.constant([[[0.0, 0.0, 4.0, 4.0]]]),
            implementation=implementation,
            **arguments,
        )


def test_twin_refuses_absurd_arguments_itself():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_tf(
            tf.ones([1, 4, 4, 1]), tf.zeros([1, 4]), tf.zeros([1], tf.int32), (2, 2), 1.0, 70000
        )


def test_numpy_integer_output_size():
    out = roi_align(
        tf.ones([1, 8, 8, 2]),
        tf.constant([[0.0, 0.0, 4.0, 4.0]]),
        tf.constant([0]),
        np.int64(3),
        sampling_ratio=np.int32(2),
        implementation="tf",
    )
    assert out.shape == (1, 3, 3, 2)


def test_twin_sample_loop_skips_what_lies_off_the_map():
    """An absurd box costs the twin a few loop iterations, not 256 x 256, and pools what
    the custom op pools."""
    from kmask.ops import roi_align_tf as twin

    features = tf.random.stateless_normal([1, 16, 16, 3], seed=(1, 2))
    boxes = tf.constant([[0.0, 0.0, 1e6, 1e6], [-3e5, 2.0, 9.0, 1e5], [1.0, 1.0, 9.0, 12.0]])
    start = tf.constant([-0.5, -0.5, 0.5])
    bin_size = (boxes[:, 2] - boxes[:, 0]) / 7.0
    grid = tf.constant([256, 256, 2])
    _, count = twin._sample_window(start, bin_size, grid, 7, tf.fill([3], 16.0))
    assert count.numpy().tolist()[2] == 2  # a box inside the map: its whole grid
    assert max(count.numpy().tolist()[:2]) <= 8  # far outside: a few samples per bin
    pooled = roi_align(features, boxes, tf.zeros([3], tf.int32), 7, implementation="tf")
    if custom_ops.load() is not None:
        expected = roi_align(features, boxes, tf.zeros([3], tf.int32), 7, implementation="custom")
        np.testing.assert_allclose(pooled, expected, atol=1e-5)
