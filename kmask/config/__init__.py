"""Experiment configuration: a frozen dataclass schema and ``load_config``.

Every default is the value of the Mask R-CNN / FPN papers (see ``shared/papers``) unless a
comment says otherwise. Experiment YAML files in ``configs/`` hold overrides of this schema
only, and may build on other files (``_base_``, docs/configs.md); ``load_config`` rejects
unknown keys, naming the key and the file, and reads kmask 0.1's spellings
(``old_spellings.RENAMED_KEYS``, also for Python code).

The model sections are the constructor arguments of the layers they configure, field for
field: ``kmask.modeling.factory`` passes each section as keyword arguments (``pooler``
sections flattened by ``layer_arguments``) and the layers' ``get_config()`` returns the
same keys. A hyperparameter is written once, here. Sections that other code adds:
``register_head_section`` (an instance head, ``model.<name>``) and
``register_backbone_section`` (a backbone type's own fields, ``model.backbone.<type>``).
"""

from kmask.config.backbone_config import (
    TRAINABLE_PRESETS,
    BackboneConfig,
    backbone_section_class,
    register_backbone_section,
)
from kmask.config.box_head_config import BoxHeadConfig
from kmask.config.config import Config
from kmask.config.data_config import DataConfig
from kmask.config.eval_config import PRECISIONS, EvalConfig
from kmask.config.fpn_config import FPNConfig
from kmask.config.input_config import InputConfig
from kmask.config.keypoint_head_config import KeypointHeadConfig
from kmask.config.loader import config_from_dict, config_to_dict, load_config
from kmask.config.mask_head_config import MaskHeadConfig
from kmask.config.model_config import ModelConfig, head_sections, register_head_section
from kmask.config.old_spellings import RENAMED_KEYS
from kmask.config.pooler_config import (
    MAX_POOLER_RESOLUTION,
    MAX_POOLER_SAMPLING_RATIO,
    PoolerConfig,
    layer_arguments,
)
from kmask.config.res5_head_config import Res5HeadConfig
from kmask.config.resnet_config import ResNetConfig
from kmask.config.roi_heads_config import ROIHeadsConfig
from kmask.config.rpn_config import RPNConfig
from kmask.config.segment_proposals_config import SegmentProposalsConfig
from kmask.config.train_config import TrainConfig
from kmask.errors import ConfigError

__all__ = [
    "MAX_POOLER_RESOLUTION",
    "MAX_POOLER_SAMPLING_RATIO",
    "RENAMED_KEYS",
    "TRAINABLE_PRESETS",
    "BackboneConfig",
    "BoxHeadConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "PRECISIONS",
    "FPNConfig",
    "InputConfig",
    "KeypointHeadConfig",
    "MaskHeadConfig",
    "ModelConfig",
    "PoolerConfig",
    "ROIHeadsConfig",
    "RPNConfig",
    "Res5HeadConfig",
    "ResNetConfig",
    "SegmentProposalsConfig",
    "TrainConfig",
    "backbone_section_class",
    "config_from_dict",
    "config_to_dict",
    "head_sections",
    "layer_arguments",
    "load_config",
    "register_backbone_section",
    "register_head_section",
]
