"""``kmask configs``: list the shipped experiment configs (--config NAME takes their names)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    from kmask.config.shipped_configs import config_summary, configs_dir, shipped_configs

    configs = shipped_configs()
    width = max(map(len, configs), default=0)
    for name, path in configs.items():
        print(f"{name:<{width}}  {config_summary(path)}")
    print(f"({len(configs)} configs in {configs_dir()}; e.g. kmask train --config shapes_tiny)")
    return 0
