"""The RoI stage: ``ROIHeads`` (sampling, the box head and its postprocessing, the shared
conv5 of the C4 models) and the instance heads that run on its RoIs (mask, keypoints),
each an ``InstanceHead`` registered with ``register_instance_head``."""

from kmask.modeling.roi_heads.box_head import BoxHead
from kmask.modeling.roi_heads.instance_head import (
    HeadContext,
    HeadOutput,
    InstanceHead,
    OutputKind,
    WeightSource,
    register_instance_head,
)
from kmask.modeling.roi_heads.keypoint_head import KeypointHead
from kmask.modeling.roi_heads.mask_head import MaskHead
from kmask.modeling.roi_heads.res5_head import Res5Head
from kmask.modeling.roi_heads.roi_heads import ROIHeads
from kmask.modeling.roi_heads.roi_sampler import ROISampler

__all__ = [
    "BoxHead",
    "HeadContext",
    "HeadOutput",
    "InstanceHead",
    "KeypointHead",
    "MaskHead",
    "OutputKind",
    "ROIHeads",
    "ROISampler",
    "Res5Head",
    "WeightSource",
    "register_instance_head",
]
