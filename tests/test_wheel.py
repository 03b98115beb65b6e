"""A built wheel, installed non-editable, runs from any directory: the configs travel inside."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the hatchling already installed, no download
    _python("-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO), check=True)
    (wheel,) = out.glob("lit_ft-*.whl")
    return wheel


def test_wheel_carries_configs_and_the_bundled_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lit_ft/conf/config.yaml" in names
    assert "lit_ft/conf/model/gpt2.yaml" in names and "lit_ft/conf/data/wikitext.yaml" in names
    assert "lit_ft/assets/tiny-gpt2-pystdlib/model.safetensors" in names


def test_installed_wheel_runs_from_another_directory(wheel, tmp_path, run_cli, tiny_overrides):
    site = tmp_path / "site"
    _python(
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(site),
        str(wheel),
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}  # ahead of any editable install of the source tree
    where = _python(
        "-c",
        "import lit_ft.config as c; print(c.config_dir())",
        cwd=elsewhere,
        env={**os.environ, **env},
    )
    assert where.stdout.strip() == str(site / "lit_ft" / "conf")

    result = run_cli([*tiny_overrides, "trainer.max_steps=5"], cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
    assert not (elsewhere / "outputs").exists()  # output went where paths.output_dir said
