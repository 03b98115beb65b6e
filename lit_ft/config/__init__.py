"""Hydra configs: where they live and how they compose (`compose`), and the check of a
composed config (`validate_config`)."""

from lit_ft.config.compose import asset_path, compose, config_dir, to_plain
from lit_ft.config.validate import validate_config

__all__ = ["asset_path", "compose", "config_dir", "to_plain", "validate_config"]
