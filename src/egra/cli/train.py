"""``egra-train``: compose the config, run the pipeline, always close W&B."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from egra.cli import config_dir, finish_wandb


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from egra.pipeline.train import run

    try:
        metrics = run(cfg)
    finally:
        finish_wandb()
    # Returned for Hydra sweepers (Optuna maximises valid Recall@20).
    value = metrics.get("valid/Recall@20")
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
