"""The backbone contract (``Backbone``, ``FeatureSpec``) and the backbone registry."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import keras


class FeatureSpec(NamedTuple):
    """What a backbone promises about one output feature map."""

    channels: int
    stride: int


class Backbone(keras.layers.Layer):
    """Base class of the networks that turn images into the ``"C2".."C5"`` feature maps.

    Contract (what the FPN, the factory and converters rely on):

    - ``call(images)``: ``images [B, H, W, 3]`` float, **already normalized** (the model's
      input normalization layer runs before the backbone; a backbone only casts to its
      compute dtype). Returns a dict ``{"C<level>": [B, ceil(H / 2**level),
      ceil(W / 2**level), channels]}``, typically levels 2..5, in the compute dtype.
    - ``output_specs() -> {name: FeatureSpec(channels, stride)}``: the same keys as ``call``
      returns, ``stride == 2**level``; known without building the layer, so consumers (the
      FPN) can be sized before any image is seen.
    - ``compute_output_shape(images_shape)`` follows from ``output_specs()`` and is
      implemented here once; unknown (``None``) sizes stay ``None``.
    - Constructor arguments are plain values (str, int, float, bool, None) so that Keras'
      automatic ``get_config`` captures them; they equal the config fields of the backbone,
      and ``build_backbone(type, **fields)`` constructs a registered backbone from them.

    Subclasses implement ``call`` and ``output_specs`` (and usually ``build``, and
    ``freeze(stages)`` for a ``model.backbone.freeze_at`` that changes during training) and
    register with ``@register_backbone("name")``.
    """

    def output_specs(self) -> dict[str, FeatureSpec]:
        """``{"C<level>": FeatureSpec(channels, stride=2**level)}`` of ``call``'s outputs."""
        raise NotImplementedError(f"{type(self).__name__} must implement output_specs()")

    def freeze(self, stages: int) -> None:
        """Makes the first ``stages`` stages (1 = stem, 2..5 = the stages of C2..C5) not
        trainable and the others trainable; training needs it when ``model.backbone.freeze_at``
        changes during the run (``train.heads_first_steps``)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement freeze(stages), which "
            "train.heads_first_steps needs"
        )

    def compute_output_shape(
        self, images_shape: tuple[int | None, ...]
    ) -> dict[str, tuple[int | None, ...]]:
        """``{name: (B, ceil(H / stride), ceil(W / stride), channels)}`` for ``[B, H, W, 3]``."""
        batch, height, width = images_shape[0], images_shape[1], images_shape[2]

        def down(size: int | None, stride: int) -> int | None:
            return None if size is None else math.ceil(size / stride)

        return {
            name: (batch, down(height, spec.stride), down(width, spec.stride), spec.channels)
            for name, spec in self.output_specs().items()
        }


_BackboneType = TypeVar("_BackboneType", bound=type[Backbone])
_REGISTRY: dict[str, type[Backbone]] = {}


def register_backbone(name: str) -> Callable[[_BackboneType], _BackboneType]:
    """Class decorator: makes ``build_backbone(name, ...)`` construct the decorated class.

    Registering the same class again (for example after a module reload) is allowed; a name
    taken by a different class is a ``ValueError``.
    """

    def register(cls: _BackboneType) -> _BackboneType:
        if not (isinstance(cls, type) and issubclass(cls, Backbone)):
            raise TypeError(f"register_backbone({name!r}): {cls!r} is not a Backbone subclass")
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise ValueError(
                f"backbone type {name!r} is already registered to {_qualified_name(existing)}"
            )
        _REGISTRY[name] = cls
        return cls

    return register


def build_backbone(type: str, **kwargs: Any) -> Backbone:
    """Constructs the backbone registered as ``type`` with constructor arguments ``kwargs``.

    Raises:
      ValueError: when no backbone is registered as ``type`` (the message lists the known
        types).
    """
    try:
        cls = _REGISTRY[type]
    except KeyError:
        raise ValueError(
            f"unknown backbone type {type!r}; known types: {sorted(_REGISTRY)}"
        ) from None
    return cls(**kwargs)


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
