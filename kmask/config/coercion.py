"""Building the frozen config dataclasses from plain YAML values, and back to plain values."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from kmask.config.backbone_config import (
    BackboneConfig,
    backbone_section_class,
    backbone_types,
)
from kmask.config.model_config import ModelConfig, head_enabled_by_default, head_sections
from kmask.errors import ConfigError

# Fields of BackboneConfig written at the top of model.backbone (the rest is the type's).
_GENERIC_BACKBONE_FIELDS = ("type", "freeze_at", "weights", "out_levels")


def build(cls: type, values: Mapping[str, Any], where: str, base: Any = None) -> Any:
    """A ``cls`` instance from ``values`` (a YAML mapping), over ``base`` (an instance whose
    fields fill the keys ``values`` leaves out; None = the class defaults).

    Raises:
      ConfigError: naming the dotted key (``where``) of an unknown key or a wrong type.
    """
    if cls is ModelConfig:
        return _build_model(values, where)
    if cls is BackboneConfig:
        return _build_backbone(values, where)
    _refuse_unknown(values, [field.name for field in dataclasses.fields(cls)], where)
    kwargs = _coerce_fields(cls, values, where, base)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def to_plain(value: Any) -> Any:
    """A config (or any value in one) as plain dicts, lists and scalars, as YAML holds it:
    instance heads as ``model.<name>`` (``null`` for an absent head that is on by default),
    the backbone type's fields as ``model.backbone.<type>``."""
    if isinstance(value, ModelConfig):
        plain = {}
        for field in dataclasses.fields(value):
            if field.name != "instance_heads":
                plain[field.name] = to_plain(getattr(value, field.name))
            if field.name == "box_head":  # where the heads stood in kmask 0.1's files
                for name in head_sections():
                    if name in value.instance_heads or head_enabled_by_default(name):
                        plain[name] = to_plain(value.instance_heads.get(name))
        return plain
    if isinstance(value, BackboneConfig):
        plain = {name: to_plain(getattr(value, name)) for name in _GENERIC_BACKBONE_FIELDS}
        return {**plain, value.type: to_plain(value.settings)}
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _refuse_unknown(values: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    unknown = sorted(str(key) for key in values if key not in valid)
    if unknown:
        guesses = [difflib.get_close_matches(key, valid, n=1) for key in unknown]
        named = [f"{key} (did you mean {g[0]}?)" if g else key for key, g in zip(unknown, guesses)]
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(named)}; valid keys: {', '.join(sorted(valid))}"
        )


def _coerce_fields(cls: type, values: Mapping[str, Any], where: str, base: Any) -> dict[str, Any]:
    """``values`` coerced to the annotated types of ``cls``'s fields; a nested section is
    built over the field's value in ``base`` (or its default), so a partial mapping keeps
    that section's own defaults (``box_head.pooler: {resolution: 14}`` keeps its
    ``sampling_ratio: 2``)."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    return {
        name: _coerce(
            value,
            hints[name],
            _join(where, name),
            getattr(base, name) if base is not None else fields[name].default,
        )
        for name, value in values.items()
    }


def _build_model(values: Mapping[str, Any], where: str) -> ModelConfig:
    """``ModelConfig``: the registered instance-head sections go to ``instance_heads``."""
    heads = head_sections()
    fields = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "instance_heads"]
    _refuse_unknown(values, [*fields, *heads], where)
    instance_heads = {}
    for name, config_class in heads.items():
        if name not in values:
            if head_enabled_by_default(name):
                instance_heads[name] = config_class()
        elif values[name] is not None:
            instance_heads[name] = _coerce(values[name], config_class, _join(where, name))
    sections = {key: value for key, value in values.items() if key in fields}
    return ModelConfig(
        **_coerce_fields(ModelConfig, sections, where, None), instance_heads=instance_heads
    )


def _build_backbone(values: Mapping[str, Any], where: str) -> BackboneConfig:
    """``BackboneConfig``: the generic fields, and the section of ``type`` as ``settings``
    (the type's defaults where it is left out or ``null``). A ``null`` section of another
    type is nothing (a file can so drop its base's section when it changes the type)."""
    type_name = _coerce(values.get("type", BackboneConfig.type), str, _join(where, "type"))
    section_class = backbone_section_class(type_name)
    _refuse_unknown(values, [*_GENERIC_BACKBONE_FIELDS, *backbone_types()], where)
    for key, value in values.items():
        if key in backbone_types() and key != type_name and value is not None:
            raise ConfigError(
                f"{_join(where, key)}: a section of backbone type {key}, but "
                f"{_join(where, 'type')} is {type_name}"
            )
    generic = {key: values[key] for key in _GENERIC_BACKBONE_FIELDS if key in values}
    settings = values.get(type_name)
    return BackboneConfig(
        **_coerce_fields(BackboneConfig, generic, where, None),
        settings=_coerce(
            {} if settings is None else settings, section_class, _join(where, type_name)
        ),
    )


def _coerce(value: Any, annotation: Any, where: str, default: Any = None) -> Any:
    """Converts a YAML value to the annotated field type, or raises ConfigError; a nested
    section is built over ``default`` when that is an instance of it."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(annotation, value, where, default if isinstance(default, annotation) else None)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, default)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _coerce(key, key_type, f"{where} (key {key!r})"): _coerce(
                item, value_type, f"{where}.{key}"
            )
            for key, item in value.items()
        }
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(items))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")
