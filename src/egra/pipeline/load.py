"""Stage: load — the run's threads and seed, and the dataset as a set-up LightningDataModule."""

from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from egra.graphs.dense import set_blas_threads

log = logging.getLogger(__name__)


def setup_run(cfg: DictConfig) -> None:
    """Thread counts (torch and numpy's BLAS) and the global seeds of ``cfg``."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
        set_blas_threads(int(cfg.threads))  # numpy's OpenBLAS too (egra.graphs.dense)
    L.seed_everything(int(cfg.seed), workers=True)


def load_data(cfg: DictConfig):
    """``cfg.data`` instantiated and set up (read, validated, split)."""
    dm = instantiate(cfg.data)
    dm.setup("fit")
    log.info("data: %s", dm.data.summary())
    return dm
