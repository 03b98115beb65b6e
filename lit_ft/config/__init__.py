"""Hydra configs: where they live and how they compose (`compose`).

A leaf: it imports nothing else of lit_ft's but its errors, so every package may use it. The
check of a composed config asks every package and lives above them (lit_ft/validate.py).
"""

from lit_ft.config.compose import asset_path, compose, config_dir, to_plain

__all__ = ["asset_path", "compose", "config_dir", "to_plain"]
