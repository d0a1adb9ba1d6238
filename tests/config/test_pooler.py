"""One pooler section for every pooled head: its checks, its defaults per head and its
flattening into the layers' arguments."""

from __future__ import annotations

import pytest

from kmask.config import ConfigError, PoolerConfig, layer_arguments, load_config

C4 = ["model.fpn=null", "model.res5_head={}", "model.backbone.out_levels=[4]"]
HEADS = {
    "box_head": ([], PoolerConfig(7, 2, True)),
    "mask_head": ([], PoolerConfig(14, 2, True)),
    "keypoint_head": (["model.keypoint_head={}"], PoolerConfig(14, 0, True)),
    "res5_head": ([*C4, "model.mask_head=null"], PoolerConfig(7, 2, True)),
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_pooled_head_has_the_same_checks(head):
    setup, default = HEADS[head]
    assert getattr(load_config(None, setup).model, head).pooler == default
    for field, value in [("resolution", 0), ("resolution", 1025), ("sampling_ratio", -1)]:
        key = f"model.{head}.pooler.{field}"
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": expected"):
            load_config(None, [*setup, f"{key}={value}"])
    partial = load_config(None, [*setup, f"model.{head}.pooler={{aligned: false}}"])
    assert getattr(partial.model, head).pooler == PoolerConfig(
        default.resolution, default.sampling_ratio, False
    )  # a partial pooler keeps the head's own defaults


def test_layer_arguments_flatten_the_pooler():
    box_head = load_config(None, ["model.box_head.pooler.sampling_ratio=0"]).model.box_head
    arguments = layer_arguments(box_head)
    assert "pooler" not in arguments
    assert (
        arguments["pooler_resolution"],
        arguments["pooler_sampling_ratio"],
        arguments["pooler_aligned"],
    ) == (7, 0, True)
    assert arguments["fc_dim"] == box_head.fc_dim


def test_c4_heads_run_on_the_res5_maps():
    with pytest.raises(ConfigError, match="model.mask_head.pooler.resolution: the C4"):
        load_config(None, C4)
    assert load_config(None, [*C4, "model.mask_head.pooler.resolution=7"]).model.res5_head
