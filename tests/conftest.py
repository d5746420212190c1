"""Shared fixtures: composed configs on tiny generated data, written under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def make_cfg(
    tmp_path: Path, overrides: list[str] | None = None, config_name: str = "train", tiny: bool = True
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` the way the CLI does, with every path under tmp_path."""
    data = ["data=synthetic", "data.preset=tiny"] if tiny else []
    base = [
        f"paths.root_dir={tmp_path}",
        *data,
        "logger=none",
        "trainer.enable_progress_bar=false",
        "threads=1",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name=config_name, overrides=base + list(overrides or []), return_hydra_config=False
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def factory(overrides: list[str] | None = None, config_name: str = "train", sub: str = "") -> DictConfig:
        root = tmp_path / sub if sub else tmp_path
        root.mkdir(parents=True, exist_ok=True)
        return make_cfg(root, overrides, config_name)

    return factory


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensor ops: extra threads only add contention on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
