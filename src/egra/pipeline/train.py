"""The train stage: data -> model -> Lightning fit -> best-checkpoint valid/test -> metrics.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from egra.graphs.dense import set_blas_threads
from egra.metrics import popularity_groups
from egra.pipeline.checks import check_config, check_data
from egra.pipeline.fingerprint import HASH_KEY, check_resume, config_hash, finished_run, record_config
from egra.pipeline.history import keep_csv_history
from egra.pipeline.io import PER_USER_FILE, git_revision, write_json
from egra.pipeline.tables import metrics_table, side_by_side
from egra.training.callbacks import CollapseGuard, FitClock
from egra.training.module import RecommenderModule

log = logging.getLogger(__name__)


def _callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c
    ]


def _loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]


def _resolve_ckpt(cfg: DictConfig, out_dir: Path) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last but %s does not exist yet: starting fresh", last)
        return None
    if not Path(ckpt).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt!r}: no such checkpoint file")
    return str(ckpt)


def build_module(cfg: DictConfig, dm, net) -> RecommenderModule:
    groups = popularity_groups(dm.data.item_train_counts(), int(cfg.eval.n_pop_groups))
    return RecommenderModule(
        net=net,
        optimizer=instantiate(cfg.optim.optimizer),
        lr_decay=lr_decay(cfg),
        ks=tuple(cfg.eval.ks),
        item_groups=torch.as_tensor(groups),
        group_ks=tuple(cfg.eval.group_ks),
    )


# Keys of a model config that configure its training recipe, not its constructor.
RECIPE_KEYS = ("lr_decay",)


def build_net(cfg: DictConfig, dm, extra_inputs: dict[str, Any] | None = None):
    mcfg = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k not in RECIPE_KEYS])
    factory = instantiate(mcfg)
    return factory(**dm.model_inputs(), **(extra_inputs or {}))


def lr_decay(cfg: DictConfig) -> tuple[float, float]:
    """``optim.lr_decay`` if set, else the model's recipe (MGCN/EGRA: MMRec's [0.96, 50]), else constant."""
    value = cfg.optim.get("lr_decay") or cfg.model.get("lr_decay") or (1.0, 50.0)
    return float(value[0]), float(value[1])


def setup_run(cfg: DictConfig) -> None:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
        set_blas_threads(int(cfg.threads))  # numpy's OpenBLAS too (egra.graphs.dense)
    L.seed_everything(int(cfg.seed), workers=True)


def load_data(cfg: DictConfig):
    dm = instantiate(cfg.data)
    dm.setup("fit")
    log.info("data: %s", dm.data.summary())
    return dm


def _fit_summary(trainer: L.Trainer, module: RecommenderModule) -> tuple[int, int]:
    """(best epoch, epochs run). Read from last.ckpt when there is one: with ``ddp_spawn``
    the fit ran in child processes and only the weights came back to this one."""
    cb = trainer.checkpoint_callback
    last = None
    if cb is not None and getattr(cb, "dirpath", None):
        last = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    if last is not None and last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        return int(ckpt.get("egra_best", {}).get("epoch", -1)), int(ckpt["epoch"]) + 1
    return module.best_epoch, int(trainer.current_epoch)


def fit_and_evaluate(
    cfg: DictConfig,
    dm,
    net,
    out_dir: Path,
    extra_metrics: dict[str, Any] | None = None,
    started: float | None = None,
) -> tuple[RecommenderModule, dict[str, Any]]:
    """Fit with early stopping, then valid and test on the best-valid checkpoint.

    Returns the module (holding the best weights) and the flat metrics dict, which also
    holds ``extra_metrics`` and, given the ``time.perf_counter()`` the run ``started`` at,
    ``wall_time_s``. Every number of it goes to the loggers as the run's final values.
    """
    t_start = time.perf_counter()
    module = build_module(cfg, dm, net)
    clock = FitClock()  # issue 13 hook: fit_time_s adds up across resumes
    callbacks = [*_callbacks(cfg), clock]
    loggers = _loggers(cfg)
    ckpt_path = _resolve_ckpt(cfg, out_dir)
    keep_csv_history(loggers, ckpt_path)  # issue 13 hook: the curve before a kill stays
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    fit_s = clock.before_s + time.perf_counter() - t_start
    # Read before validate/test: loading the best checkpoint restores the callbacks' state of
    # that (earlier) epoch, which predates a collapse.
    guard = next((c for c in callbacks if isinstance(c, CollapseGuard)), None)
    collapse = guard.reason if guard is not None else None
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    best_epoch, epochs_run = _fit_summary(trainer, module)
    # Best-valid epoch's weights, then valid and test on them (= MMRec's "test at best valid").
    valid = trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)[0]

    if trainer.world_size == 1 and module.per_user_test and trainer.is_global_zero:
        # Per-user test metrics of the best-valid weights, for paired tests across models.
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(
            out_dir / PER_USER_FILE, **{k: torch.cat(v).numpy() for k, v in module.per_user_test.items()}
        )
    metrics: dict[str, Any] = {k: float(v) for k, v in {**valid, **test}.items()}
    metrics.update(
        {
            "best_epoch": int(best_epoch),
            "epochs_run": epochs_run,
            "fit_time_s": round(fit_s, 3),
            "model": str(cfg.model._target_).rsplit(".", 1)[-1],
            "dataset": dm.data.name,
            "dataset_fingerprint": dm.data.fingerprint(),
            "seed": int(cfg.seed),
            "git_revision": git_revision(),
        }
    )
    metrics["status"] = "collapsed" if collapse else "ok"
    if collapse:
        metrics["collapse"] = collapse
    metrics.update(extra_metrics or {})
    if started is not None:
        metrics["wall_time_s"] = round(time.perf_counter() - started, 3)
    if trainer.is_global_zero and loggers:
        numbers = {
            k: int(v) if isinstance(v, bool) else v for k, v in metrics.items() if isinstance(v, (int, float))
        }
        for lg in loggers:
            lg.log_metrics(numbers)
    return module, metrics


def run(cfg: DictConfig, extra_inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; write and return ``metrics.json``'s content.

    Models that train on a pretrained item-item graph (EGRA) get it from the pretrain
    and graph stages first (cached artifacts).
    """
    t_start = time.perf_counter()
    check_config(cfg)  # issue 13 hook: every setting checked before any stage
    out_dir = Path(cfg.paths.output_dir)
    metrics_path = out_dir / "metrics.json"
    if cfg.get("skip_if_done", False) and cfg.get("ckpt_path") in (None, ""):
        done = finished_run(cfg, out_dir)  # issue 13 hook: reuse only a run of this config
        if done is not None:
            return done
    check_resume(cfg, out_dir)  # issue 13 hook: a resume keeps the model, data and seed
    if rank_zero_only.rank == 0:
        record_config(cfg, out_dir)  # issue 13 hook: what a later resume compares against
    setup_run(cfg)
    dm = load_data(cfg)
    check_data(cfg, dm)  # issue 13 hook: size- and feature-dependent settings, before pretraining
    extra = dict(extra_inputs or {})
    stage_info: dict[str, Any] = {}
    if "graph_source" in cfg.model and "item_graph" not in extra:
        from egra.pipeline.graph import pretrained_item_graph

        extra["item_graph"], stage_info = pretrained_item_graph(cfg, dm)
        # Training a backbone consumes the global RNGs, reusing its cached artifact does not:
        # re-seed so the model starts the same either way (sweeps and resumed runs reuse it).
        L.seed_everything(int(cfg.seed), workers=True)
    net = build_net(cfg, dm, extra)
    module, metrics = fit_and_evaluate(cfg, dm, net, out_dir, extra_metrics=stage_info, started=t_start)
    metrics[HASH_KEY] = config_hash(cfg)  # issue 13 hook: what skip_if_done compares
    if rank_zero_only.rank == 0:
        write_json(metrics_path, metrics)
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
        print(
            f"\n{metrics['model']} on {metrics['dataset']}: best epoch {metrics['best_epoch']}, "
            f"{metrics['fit_time_s']:.1f}s training"
        )
        print(metrics_table(metrics, "test", tuple(cfg.eval.ks)))
        if any(k.startswith("backbone/") for k in metrics):
            print(f"\n{metrics['model']} next to its backbone ({metrics['graph_source']}, pretrained):")
            print(side_by_side(metrics))
        print(f"results: {metrics_path}")
    return metrics
