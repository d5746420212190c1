"""Thin Hydra entry points. Nothing imports this package."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> str:
    """The ``conf/`` tree: $EGRA_CONF, else the one beside ``src/`` in a source checkout."""
    env = os.environ.get("EGRA_CONF")
    if env:
        return str(Path(env).resolve())
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "conf" / "train.yaml").exists():
            return str(parent / "conf")
    raise FileNotFoundError("cannot find the conf/ directory: set EGRA_CONF to the project's conf/ folder")


def finish_wandb(exit_code: int | None = None) -> None:
    """Close a live W&B run so the jobs of a multirun never merge into one (a non-zero
    ``exit_code`` marks the W&B run as failed)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
