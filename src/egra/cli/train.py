"""``egra-train``: compose the config, run the pipeline, always close W&B.

In a multirun (``-m``) one failing job does not end the sweep: its traceback goes to
``<job dir>/error.txt`` and to the log, the sweeper is told "no result" (None; ``-inf``
for an Optuna study that maximises, ``+inf`` for one that minimises, so the study goes on)
and the next job starts. A single run re-raises, except a user error (bad setting, bad data:
``egra.cli.errors``), which prints one line and exits with its own status. Re-running a sweep into the same
``hydra.sweep.dir`` skips the jobs that wrote ``metrics.json`` (``skip_if_done``) and runs
the failed and missing ones again.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from egra.cli import config_dir, finish_wandb
from egra.cli.console import drop_lightning_handlers, quiet_console
from egra.cli.errors import ERROR_FILE, exit_code, exit_if_user_error, one_line
from egra.pipeline.checks import ConfigError, check_config, moved_model_keys

log = logging.getLogger(__name__)
DEFAULT_OBJECTIVE = "valid/Recall@20"


def _hydra_job() -> Any | None:
    """The running job's ``hydra`` node, or None outside ``@hydra.main`` (e.g. called by a test)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_multirun(hydra_cfg: Any | None) -> bool:
    from hydra.types import RunMode

    return hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN


def failed_value(hydra_cfg: Any) -> float | list[float] | None:
    """What a failed job returns to its sweeper: None, or the worst value for Optuna.

    Optuna's sweeper stops the whole study on a value it cannot cast to float (None, NaN),
    so a failed trial reports the worst possible score in each direction instead.
    """
    sweeper = hydra_cfg.get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None

    def worst(direction: Any) -> float:
        return -math.inf if "max" in str(direction).lower() else math.inf

    direction = sweeper.get("direction", "minimize")
    if isinstance(direction, str) or not hasattr(direction, "__iter__"):
        return worst(direction)
    return [worst(d) for d in direction]


def record_failure(hydra_cfg: Any, exc: BaseException) -> Path:
    """Write the traceback to ``<job dir>/error.txt`` and log it; return the file."""
    job_dir = Path(hydra_cfg.runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / ERROR_FILE
    overrides = " ".join(hydra_cfg.overrides.task) or "(no overrides)"
    if exit_code(exc) is not None:  # a user error: its one line says everything
        text = one_line(exc) + "\n"
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path.write_text(f"job {hydra_cfg.job.num}: {overrides}\n\n{text}")
    log.error(
        "job %s failed (%s); the sweep goes on. Details: %s",
        hydra_cfg.job.num,
        one_line(exc) if exit_code(exc) is not None else f"{type(exc).__name__}: {exc}",
        path,
    )
    return path


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | list[float] | None:
    hydra_cfg = _hydra_job()
    failed = False
    try:
        # Each fact once on the console; a bad setting is reported before torch and Lightning
        # are imported (the check reads no more than the config and the classes' source).
        quiet_console()
        check_config(cfg)
        from egra.pipeline.train import run

        drop_lightning_handlers()

        metrics = run(cfg)
    except Exception as exc:
        failed = True
        if not _is_multirun(hydra_cfg):
            exit_if_user_error("egra-train", exc, cfg)
            raise
        record_failure(hydra_cfg, exc)
        return failed_value(hydra_cfg)
    finally:
        # One W&B run per job: a multirun's jobs would otherwise merge into one.
        finish_wandb(exit_code=1 if failed else None)
    if _is_multirun(hydra_cfg):
        # A re-run that succeeded: the previous attempt's traceback no longer applies.
        (Path(hydra_cfg.runtime.output_dir) / ERROR_FILE).unlink(missing_ok=True)
    # Returned for Hydra sweepers (Optuna maximises it): valid/Recall@20 unless the config says.
    value = metrics.get(cfg.get("optimized_metric") or DEFAULT_OBJECTIVE)
    return float(value) if value is not None else None


def cli() -> None:
    """The ``egra-train`` console script: Hydra's ``main`` after a look at the raw overrides for
    keys that moved out of ``model`` (one line and exit 2, as for any bad setting)."""
    moved = moved_model_keys(sys.argv[1:])
    if moved:
        exit_if_user_error("egra-train", ConfigError(moved[0]), None)
    main()


if __name__ == "__main__":
    cli()
