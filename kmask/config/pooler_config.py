"""``PoolerConfig``: the RoIAlign settings of every pooled head (``<head>.pooler``)."""

from __future__ import annotations

import dataclasses

from kmask.errors import ConfigError

# Bounds of the RoIAlign arguments (kmask.ops.roi_align_tf.MAX_GRID / MAX_OUTPUT_SIZE, the
# custom op's KMASK_MAX_GRID / KMASK_MAX_POOLED).
MAX_POOLER_SAMPLING_RATIO = 256
MAX_POOLER_RESOLUTION = 1024


@dataclasses.dataclass(frozen=True)
class PoolerConfig:
    """RoIAlign of a head (``MultiLevelROIAlign``): ``resolution`` x ``resolution`` bins.

    The layers keep flat constructor arguments (``pooler_resolution``,
    ``pooler_sampling_ratio``, ``pooler_aligned``, what saved ``.keras`` files hold);
    ``kmask.modeling.factory`` flattens this section into them (``layer_arguments``).
    ``ModelConfig`` checks the pooler of every section that has one (``check``).
    """

    # Output side of the pooled maps.
    resolution: int
    # Samples per bin and axis: 2 = the paper's four sampled locations; 0 = adaptive,
    # ceil(roi_size / resolution) (detectron2).
    sampling_ratio: int = 0
    # Half-pixel-corrected RoIAlign (detectron2's ROIAlignV2). The papers' op and
    # torchvision: false.
    aligned: bool = True

    def check(self, where: str) -> None:
        """Range checks; ``where`` is the section's dotted key (``model.box_head.pooler``).

        Raises:
          ConfigError: naming ``where`` and the field out of range.
        """
        if not 1 <= self.resolution <= MAX_POOLER_RESOLUTION:
            raise ConfigError(
                f"{where}.resolution: expected an integer in [1, {MAX_POOLER_RESOLUTION}], "
                f"got {self.resolution}"
            )
        if not 0 <= self.sampling_ratio <= MAX_POOLER_SAMPLING_RATIO:
            raise ConfigError(
                f"{where}.sampling_ratio: expected an integer in "
                f"[0, {MAX_POOLER_SAMPLING_RATIO}] (0 = adaptive), got {self.sampling_ratio}"
            )

    def layer_arguments(self) -> dict[str, int | bool]:
        """The layers' constructor arguments: ``pooler_resolution``, ``pooler_sampling_ratio``
        and ``pooler_aligned``."""
        return {
            "pooler_resolution": self.resolution,
            "pooler_sampling_ratio": self.sampling_ratio,
            "pooler_aligned": self.aligned,
        }


def layer_arguments(section: object) -> dict[str, object]:
    """The fields of a config section as its layer's constructor arguments: a ``pooler``
    field is flattened into ``pooler_resolution``, ``pooler_sampling_ratio`` and
    ``pooler_aligned``; the other fields are kept (``BoxHead(**layer_arguments(box_head))``).
    """
    arguments: dict[str, object] = {}
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if isinstance(value, PoolerConfig):
            arguments.update(value.layer_arguments())
        else:
            arguments[field.name] = value
    return arguments
