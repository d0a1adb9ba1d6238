"""Reusable Keras layers."""

from kmask.layers.frozen_batch_norm import FrozenBatchNorm
from kmask.layers.multi_level_roi_align import MultiLevelROIAlign
from kmask.layers.roi_align import ROIAlign
