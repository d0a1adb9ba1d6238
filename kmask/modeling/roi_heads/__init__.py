"""The RoI stage: ``ROIHeads`` (sampling, the box head and its postprocessing, the shared
conv5 of the C4 models) and the instance heads that run on its RoIs (mask, keypoints)."""

from kmask.modeling.roi_heads.box_head import BoxHead
from kmask.modeling.roi_heads.keypoint_head import KeypointHead
from kmask.modeling.roi_heads.mask_head import MaskHead
from kmask.modeling.roi_heads.res5_head import Res5Head
from kmask.modeling.roi_heads.roi_heads import ROIHeads
from kmask.modeling.roi_heads.roi_sampler import ROISampler

__all__ = ["BoxHead", "KeypointHead", "MaskHead", "ROIHeads", "ROISampler", "Res5Head"]
