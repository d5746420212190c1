"""``egra-pretrain backbone=mgcn|freedom|lgmrec|damrs|lightgcn|raw_features|random``: build or reuse an embedding artifact."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from egra.cli import config_dir, finish_wandb
from egra.cli.console import drop_lightning_handlers, quiet_console
from egra.cli.errors import exit_if_user_error
from egra.pipeline.checks import check_config


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="pretrain")
def main(cfg: DictConfig) -> None:
    try:
        quiet_console()  # each fact once
        check_config(cfg)  # bad settings before torch's import
        from egra.pipeline.pretrain import run

        drop_lightning_handlers()

        run(cfg)
    except Exception as exc:
        exit_if_user_error("egra-pretrain", exc, cfg)
        raise
    finally:
        finish_wandb()


if __name__ == "__main__":
    main()
