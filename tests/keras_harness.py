"""The shared Keras checks of the layer and model tests: serialization round trips and
mixed precision, so that each test states only what is particular to its layer.

- ``assert_round_trip(layer, *call_args, compare_outputs=True, **call_kwargs)``:
  ``from_config(get_config())`` gives the same config; ``serialize_keras_object`` -> JSON
  text -> ``deserialize_keras_object`` gives a layer of the same type and config (compared
  as JSON, where tuples are lists); that clone, given the layer's weights, returns the same
  outputs on the call arguments, leaf by leaf and exactly. Returns the clone. Layers whose
  call draws random samples get the config checks only (no call arguments, or
  ``compare_outputs=False``).
- ``assert_mixed_precision(make_layer, *call_args, float32_outputs=None, policies=...,
  **call_kwargs)``: for each global dtype policy (``MIXED_POLICIES``: ``"mixed_bfloat16"``
  and ``"mixed_float16"``), makes the layer, calls it and checks that every sublayer owning
  weights computes in the half dtype on float32 variables, that the floating outputs named
  in ``float32_outputs`` (all of them when ``None``) are float32 and the others are in the
  half dtype, and that ``from_config(get_config())`` under the float32 policy computes in
  the half dtype too. The global policy is restored afterwards. Returns
  ``{policy: MixedPrecisionRun}`` (the layer, its outputs, the half dtype, the layer made
  from its config) for the test's own checks; ``MixedPrecisionRun.tolerance`` scales a
  float16 tolerance to bfloat16.
- ``global_dtype_policy(policy)``: a context manager that sets the global dtype policy and
  restores the previous one.

Output leaves are named by their path in the nested output, keys and tuple indices joined
by ``/``: ``"detection_boxes"``, ``"0/P2"``; a name also covers everything below it
(``"0"`` is the whole first element).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

MIXED_POLICIES = ("mixed_bfloat16", "mixed_float16")


# --------------------------------------------------------------------------- round trips


def assert_round_trip(
    layer: keras.layers.Layer,
    *call_args: Any,
    compare_outputs: bool = True,
    **call_kwargs: Any,
) -> keras.layers.Layer:
    """Config and serialization round trips of ``layer``; with call arguments and
    ``compare_outputs``, also the same outputs from the clone given the same weights.

    ``compare_outputs=False`` is for layers whose call draws random samples (the config
    checks still run; the call arguments are then not used). Returns the clone made through
    ``serialize_keras_object`` -> JSON -> ``deserialize_keras_object``.
    """
    config = layer.get_config()
    from_config = type(layer).from_config(config)
    assert type(from_config) is type(layer)
    assert from_config.get_config() == config

    # Through JSON text, as a .keras file stores it: tuples come back as lists, so the
    # configs are compared as JSON.
    text = json.dumps(keras.saving.serialize_keras_object(layer))
    clone = keras.saving.deserialize_keras_object(json.loads(text))
    assert type(clone) is type(layer), f"{type(clone).__name__} != {type(layer).__name__}"
    assert _as_json(clone.get_config()) == _as_json(config)

    if compare_outputs and (call_args or call_kwargs):
        expected = layer(*call_args, **call_kwargs)
        clone(*call_args, **call_kwargs)  # builds the clone's weights
        clone.set_weights(layer.get_weights())
        assert [w.trainable for w in clone.weights] == [w.trainable for w in layer.weights]
        assert_same_outputs(clone(*call_args, **call_kwargs), expected)
    return clone


def assert_same_outputs(actual: Any, expected: Any) -> None:
    """``actual`` has the structure of ``expected`` (dict keys in the same order) and every
    leaf equals the corresponding leaf exactly, dtype included."""
    expected_leaves = _leaves(expected)
    actual_leaves = _leaves(actual)
    assert list(actual_leaves) == list(expected_leaves), "output structures differ"
    for path, value in expected_leaves.items():
        ours, theirs = _numpy(actual_leaves[path]), _numpy(value)
        assert ours.dtype == theirs.dtype, f"{path}: {ours.dtype} != {theirs.dtype}"
        np.testing.assert_array_equal(ours, theirs, err_msg=path)


# ------------------------------------------------------------------------ mixed precision


@contextlib.contextmanager
def global_dtype_policy(policy: str) -> Iterator[None]:
    """Sets the global dtype policy inside the block and restores the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@dataclass
class MixedPrecisionRun:
    """What ``assert_mixed_precision`` made under one policy."""

    layer: keras.layers.Layer
    outputs: Any
    compute_dtype: str  # the policy's half dtype, "bfloat16" or "float16"
    reloaded: keras.layers.Layer  # from_config(layer.get_config()) under float32, called

    def tolerance(self, float16: float) -> float:
        """A tolerance given for float16, scaled to this run's dtype: bfloat16 keeps 3
        fewer mantissa bits (8 against 11), so its errors are 8 times larger."""
        return float16 if self.compute_dtype == "float16" else 8 * float16


def assert_mixed_precision(
    make_layer: Callable[[], keras.layers.Layer],
    *call_args: Any,
    float32_outputs: Sequence[str] | None = None,
    policies: Sequence[str] = MIXED_POLICIES,
    **call_kwargs: Any,
) -> dict[str, MixedPrecisionRun]:
    """Makes and calls the layer under each mixed global policy; see the module docstring.

    Layers without weights (anchor generation, sampling, postprocessing) may keep float32 by
    design, and so may containers that only hold other layers; every layer that owns
    floating weights, ``make_layer()``'s result included, must compute in the half dtype
    and keep float32 variables.
    """
    runs = {}
    for policy in policies:
        half = keras.DTypePolicy(policy).compute_dtype
        with global_dtype_policy(policy):
            layer = make_layer()
            outputs = layer(*call_args, **call_kwargs)
        _assert_half_layers(layer, half, policy)
        for path, value in _leaves(outputs).items():
            dtype = keras.backend.standardize_dtype(value.dtype)
            if not _is_floating(dtype):
                continue
            wanted = "float32" if _named(path, float32_outputs) else half
            assert dtype == wanted, f"{policy}: output {path or '(the output)'} is {dtype}"
        # The policy travels with the config: a layer made from it under the float32
        # policy (as a saved model is loaded) computes in the half dtype too.
        with global_dtype_policy("float32"):
            clone = type(layer).from_config(layer.get_config())
            clone(*call_args, **call_kwargs)
        _assert_half_layers(clone, half, f"{policy} (from_config)")
        runs[policy] = MixedPrecisionRun(layer, outputs, half, clone)
    return runs


def _assert_half_layers(layer: keras.layers.Layer, half: str, context: str) -> None:
    """Every layer that owns floating weights (``layer`` included) computes in ``half`` on
    float32 variables. Containers that only hold other layers are not checked: their
    policy does not enter the arithmetic."""
    owners = 0
    for sublayer in layer._flatten_layers(include_self=True):
        own = _own_weights(sublayer)
        if not any(_is_floating(w.dtype) for w in own):
            continue
        owners += 1
        assert sublayer.compute_dtype == half, (
            f"{context}: {sublayer.name} computes in {sublayer.compute_dtype}"
        )
        for weight in own:
            if _is_floating(weight.dtype):
                assert weight.dtype == "float32", f"{context}: {weight.path} is {weight.dtype}"
    assert owners or not layer.weights, f"{context}: {layer.name} has no layer owning weights"


def _own_weights(layer: keras.layers.Layer) -> list[keras.Variable]:
    """The weights of ``layer`` that none of its sublayers holds."""
    held = {
        id(w)
        for child in layer._flatten_layers(include_self=False, recursive=False)
        for w in child.weights
    }
    return [w for w in layer.weights if id(w) not in held]


# -------------------------------------------------------------------------------- helpers


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of nested dicts, lists and tuples keyed by their path, in order."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    leaves = {}
    for key, value in items:
        leaves.update(_leaves(value, f"{prefix}/{key}" if prefix else str(key)))
    return leaves


def _as_json(config: dict[str, Any]) -> Any:
    return json.loads(json.dumps(config))


def _named(path: str, names: Sequence[str] | None) -> bool:
    if names is None:
        return True
    return any(path == name or path.startswith(f"{name}/") for name in names)


def _is_floating(dtype: Any) -> bool:
    return "float" in keras.backend.standardize_dtype(dtype)


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))
