"""The instance-head contract: what a head on the RoIs declares once (``InstanceHead``), and
the registry of heads (``register_instance_head``) that the model, the factory, weight
transfer, the converters, ``Predictor``, the export graph and the visualizer loop over."""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import keras
import tensorflow as tf

from kmask.config import head_sections, layer_arguments, register_head_section

# Ground truth every detector reads besides its instance heads' (``MaskRCNN``), and the key
# of each image's random seed, which travels with the targets (the stages' sampling is a
# stateless function of it).
BASE_TARGET_KEYS = ("gt_boxes", "gt_classes")
SEED_KEY = "seed"


class OutputKind(enum.Enum):
    """How a per-detection output relates to image pixels (``HeadOutput.to_source``).

    - ``BOX_FRAME``: ``[B, N, m, m]`` maps (probabilities) in each detection's box frame;
      the box places them, they do not scale. ``Predictor`` pastes them into the image
      (bool ``[n, H, W]`` at ``mask_threshold``), the export keeps them and pastes them
      (uint8 ``[B, N, H, W]``) under ``HeadOutput.pasted_key`` when asked for full masks.
    - ``POINTS``: ``[B, N, K, C]`` points, ``(x, y)`` first, in continuous pixels; x scales
      with the width, y with the height, the other channels (a score) are kept.
    - ``AREA``: ``[B, N, ...]`` values in square pixels; they scale with the product of
      the two scale factors.
    """

    BOX_FRAME = "box_frame"
    POINTS = "points"
    AREA = "area"


@dataclasses.dataclass(frozen=True)
class HeadOutput:
    """One per-detection output of an instance head and how it maps to source pixels.

    Attributes:
      key: the model's output, ``[B, N, ...]`` (``detection_masks``), zero past
        ``num_detections``.
      kind: an ``OutputKind``.
      detection_key: its key in ``Predictor.image_detections`` (``masks``), the first
        ``num_detections`` entries in the target image's pixels.
      pasted_key: ``BOX_FRAME`` only: the export's full-image output
        (``detection_full_masks``).
    """

    key: str
    kind: OutputKind
    detection_key: str
    pasted_key: str | None = None

    def to_source(self, values: Any, scale_y: Any, scale_x: Any, origin: float = 0.0) -> tf.Tensor:
        """``values`` (float32, ``[B, N, ...]`` or one image's ``[n, ...]``; NumPy or
        TensorFlow) from the model's resized-image pixels to the target image's.

        ``scale_y``, ``scale_x``: target size / resized size, broadcastable to the
        detection axes (``[B, 1]`` for a batch, scalars for one image). ``BOX_FRAME``
        values are returned unchanged (pasting is the caller's). ``POINTS`` are scaled
        about ``origin`` (the head's ``point_origin``): ``(p - origin) * scale + origin``;
        0 for continuous coordinates, 0.5 for a head whose source scales pixel indices
        (torchvision's keypoints)."""
        values = tf.convert_to_tensor(values, tf.float32)
        if self.kind is OutputKind.BOX_FRAME:
            return values
        if self.kind is OutputKind.POINTS:
            xy = tf.stack([scale_x, scale_y], -1)
            for _ in range(values.shape.rank - xy.shape.rank):
                xy = tf.expand_dims(xy, -2)
            points = (values[..., :2] - origin) * tf.cast(xy, tf.float32) + origin
            return tf.concat([points, values[..., 2:]], -1)
        factor = tf.convert_to_tensor(scale_y * scale_x, tf.float32)
        for _ in range(values.shape.rank - factor.shape.rank):
            factor = tf.expand_dims(factor, -1)
        return values * factor


class ClassRows(NamedTuple):
    """The per-class layout of a class-dependent layer's output units (weight transfer
    with a class map copies each class's units from its source class)."""

    #: output units per class: 1 for a score or a mask map, 4 for box deltas.
    units: int
    #: a background slot always comes first (else only when the layer predicts one, seen
    #: as one slot more than classes).
    background_first: bool


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where one sublayer's weights are in a checkpoint of another library.

    Attributes:
      layer: a ``Conv2D``, ``Conv2DTranspose`` or ``Dense`` (``<key>.weight``,
        ``<key>.bias``, PyTorch layouts), or a normalization layer (``<key>.weight``,
        ``.bias``, ``.running_mean``, ``.running_var``).
      key: the source prefix of its arrays.
      class_rows: the outputs are per class: keep the source rows of kmask's classes
        (``Converter.class_rows``, the mask channels).
    """

    layer: keras.layers.Layer
    key: str
    class_rows: bool = False


def conv_stack_sources(stack: keras.layers.Layer, keys: Sequence[tuple[str, str]]) -> list:
    """``WeightSource`` of each conv and its norm (none without) of a ``ConvStack``, from
    ``(conv key, norm key)`` pairs."""
    sources = []
    for conv, norm, (conv_key, norm_key) in zip(stack.convs, stack.norms, keys):
        sources.append(WeightSource(conv, conv_key))
        if norm is not None:
            sources.append(WeightSource(norm, norm_key))
    return sources


@dataclasses.dataclass(frozen=True)
class HeadContext:
    """What the factory knows of the model besides a head's section.

    Attributes:
      num_classes: foreground classes K.
      pooler_levels: (min, max) FPN levels to pool from, or ``None`` under a shared head
        (the ResNet-C4 ``Res5Head``: features arrive pooled, ``PooledHead``).
      roi_align_implementation: "auto" | "custom" | "tf".
    """

    num_classes: int
    pooler_levels: tuple[int, int] | None
    roi_align_implementation: str


class InstanceHead:
    """The contract of a head on the RoIs (a mixin of a Keras layer, usually a ``PooledHead``).

    A head declares, as class attributes:

    - ``section``: its config section ``model.<section>`` and its layer name;
      ``config_class``, the frozen dataclass of that section (a ``pooler`` field is a
      ``PoolerConfig``); ``enabled_by_default``: whether the section is set by default;
    - ``target_keys``: the ground truth it reads in ``compute_losses`` besides
      ``BASE_TARGET_KEYS`` (``("gt_masks",)``); the data pipeline must provide them;
    - ``outputs``: its ``HeadOutput`` s (key, ``OutputKind``, detection key);
    - ``loss_names``: the keys of its losses, also the model's metric (loss tracker) names;
    - ``class_dependent_layers``: ``{sublayer name: ClassRows or None}``, the layers whose
      shapes follow the number of classes (or of keypoints), which weight transfer
      re-initializes when they differ (``ClassRows``: copied class by class with a class
      map);

    and implements (``register_instance_head`` refuses a head without ``compute_losses``
    and ``inference``):

    - ``from_section(section, context)`` (classmethod): the head from its section and a
      ``HeadContext``; the default passes the section's fields (pooler flattened), the
      context's three fields and ``name=section``;
    - ``compute_losses(features, rois [B, Q, 4], classes [B, Q] 0-based or -1,
      matched_index [B, Q], targets, training)`` -> ``{loss: float32 scalar}``;
    - ``inference(features, detections)`` -> ``{output key: [B, N, ...]}``;
    - ``weight_sources(converter)`` -> ``[WeightSource]`` for a converter name
      (``"torchvision"``, ``"detectron2"``), ``None`` where it has no mapping (the
      converter then refuses the model).

    ``register_instance_head`` registers the class and its section.
    """

    section: ClassVar[str]
    config_class: ClassVar[type]
    enabled_by_default: ClassVar[bool] = False
    target_keys: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[HeadOutput, ...]] = ()
    #: where its ``POINTS`` outputs are scaled about when mapped to the source image
    #: (``HeadOutput.to_source``).
    point_origin: float = 0.0
    loss_names: ClassVar[tuple[str, ...]] = ()
    class_dependent_layers: ClassVar[Mapping[str, ClassRows | None]] = types.MappingProxyType({})

    @classmethod
    def from_section(cls, section: Any, context: HeadContext) -> InstanceHead:
        """The head configured by ``section`` (an instance of ``config_class``)."""
        return cls(
            **layer_arguments(section),
            num_classes=context.num_classes,
            pooler_levels=context.pooler_levels,
            roi_align_implementation=context.roi_align_implementation,
            name=cls.section,
        )

    def weight_sources(self, converter: str) -> list[WeightSource] | None:
        """Where each weight is in a ``converter`` checkpoint; ``None``: no mapping."""
        return None


# section -> head class.
_HEADS: dict[str, type[InstanceHead]] = {}


def register_instance_head(cls: type[InstanceHead]) -> type[InstanceHead]:
    """Class decorator: registers an ``InstanceHead`` layer under its ``section`` and the
    section in ``kmask.config`` (``register_head_section``), so that ``model.<section>``
    configures it. Registering a class again is a no-op.

    Raises:
      ValueError: ``cls`` is not a Keras layer and an ``InstanceHead``, lacks
        ``compute_losses`` or ``inference``, its section is
        taken by another class, or an output or loss name is another head's.
    """
    if not (issubclass(cls, keras.layers.Layer) and issubclass(cls, InstanceHead)):
        raise ValueError(f"{cls.__name__}: an instance head is a keras Layer and an InstanceHead")
    missing = [name for name in ("compute_losses", "inference") if not hasattr(cls, name)]
    if missing:
        raise ValueError(f"{cls.__name__}: an instance head implements {' and '.join(missing)}")
    if _HEADS.get(cls.section) is cls:
        return cls
    if cls.section in _HEADS:
        raise ValueError(
            f"{cls.__name__}: the section {cls.section!r} is {_HEADS[cls.section].__name__}'s"
        )
    for other in _HEADS.values():
        taken = {o.key for o in other.outputs} | set(other.loss_names)
        clash = sorted(taken & ({o.key for o in cls.outputs} | set(cls.loss_names)))
        if clash:
            raise ValueError(f"{cls.__name__}: {', '.join(clash)} already {other.__name__}'s")
    register_head_section(cls.section, cls.config_class, cls.enabled_by_default)
    _HEADS[cls.section] = cls
    return cls


def instance_head_class(section: str) -> type[InstanceHead]:
    """The head class registered for ``model.<section>``.

    Raises:
      KeyError: naming the section and the registered ones.
    """
    if section not in _HEADS:
        raise KeyError(
            f"no instance head registered for model.{section}; registered: {', '.join(_HEADS)}"
        )
    return _HEADS[section]


def instance_heads() -> dict[str, type[InstanceHead]]:
    """``{section: head class}`` of every registered head, in the order of the config's
    sections (``kmask.config.head_sections``: mask, keypoints, then the heads registered
    later), whatever order the modules were imported in."""
    return {section: _HEADS[section] for section in head_sections() if section in _HEADS}


@tf.autograph.experimental.do_not_convert  # plain Python, called in traced steps
def target_keys() -> tuple[str, ...]:
    """``BASE_TARGET_KEYS``, every registered head's ``target_keys`` and ``SEED_KEY``: the
    keys of a batch that are targets, not model inputs."""
    keys = list(BASE_TARGET_KEYS)
    for cls in instance_heads().values():
        keys.extend(key for key in cls.target_keys if key not in keys)
    return (*keys, SEED_KEY)


def head_outputs() -> dict[str, HeadOutput]:
    """``{output key: HeadOutput}`` of every registered head."""
    return {output.key: output for cls in instance_heads().values() for output in cls.outputs}


def point_origins(model: Any) -> dict[str, float]:
    """``{output key: point_origin}`` of the instance heads of ``model`` (a ``MaskRCNN``),
    the ``origin`` argument of ``HeadOutput.to_source``."""
    heads = [] if model.roi_heads is None else model.roi_heads.instance_heads
    return {output.key: head.point_origin for head in heads for output in head.outputs}
