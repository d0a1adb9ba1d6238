"""``model.keypoint_head.heatmap_coordinates``: default, round trip, bad values."""

import pytest

from kmask.config import ConfigError, config_from_dict, config_to_dict
from kmask.convert import TorchvisionConverter


def test_default_round_trip_and_refusal():
    config = config_from_dict({"model": {"keypoint_head": {}}})
    assert config.model.keypoint_head.heatmap_coordinates == "continuous"
    torchvision = TorchvisionConverter.ARCHITECTURES["keypointrcnn_resnet50_fpn"]
    config = config_from_dict(torchvision)
    assert config.model.keypoint_head.heatmap_coordinates == "pixel_index"
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="heatmap_coordinates: expected one of"):
        config_from_dict({"model": {"keypoint_head": {"heatmap_coordinates": "pixels"}}})
