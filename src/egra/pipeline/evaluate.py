"""Stage: evaluate — valid and test on the best-valid checkpoint (MMRec's "test at best valid").

:func:`load_module` rebuilds a trained model from a checkpoint on the graphs it names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from egra.pipeline.fit import Fitted, build_module, build_net
from egra.pipeline.graph import Graphs, GraphSpec, constructor_config, load_named
from egra.pipeline.io import PER_USER_FILE, git_revision
from egra.training.module import RecommenderModule


def evaluate(
    cfg: DictConfig,
    dm,
    fitted: Fitted,
    extra_metrics: dict[str, Any] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """The flat metrics dict of a fitted run: valid/test on the best weights, fit summary,
    ``extra_metrics`` and, given the ``time.perf_counter()`` the run ``started`` at,
    ``wall_time_s``. Every number goes to the fit's loggers as the run's final values.
    ``status`` is ``fitted.status`` (``egra.pipeline.fit.STATUSES``); when it is not ``"ok"``
    ``status_reason`` says why (and, for ``"collapsed"``, ``collapse`` as before). On one device the per-user test metrics are saved to
    ``fitted.out_dir / PER_USER_FILE`` (for paired tests across models).

    Under DDP every rank scores its own users and the sums are all-reduced, so every rank
    returns the same metrics.
    """
    trainer, module = fitted.trainer, fitted.module
    valid = trainer.validate(module, datamodule=dm, ckpt_path=fitted.best_path, verbose=False)[0]
    test = trainer.test(module, datamodule=dm, ckpt_path=fitted.best_path, verbose=False)[0]
    out_dir = fitted.out_dir
    if out_dir is not None and trainer.world_size == 1 and module.per_user_test and trainer.is_global_zero:
        # Per-user test metrics of the best-valid weights, for paired tests across models.
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(
            out_dir / PER_USER_FILE, **{k: torch.cat(v).numpy() for k, v in module.per_user_test.items()}
        )
    metrics: dict[str, Any] = {k: float(v) for k, v in {**valid, **test}.items()}
    metrics.update(
        {
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
            "fit_time_s": round(fitted.fit_s, 3),
            "model": str(cfg.model._target_).rsplit(".", 1)[-1],
            "dataset": dm.data.name,
            "dataset_fingerprint": dm.data.fingerprint(),
            "seed": int(cfg.seed),
            "git_revision": git_revision(),
        }
    )
    metrics["status"] = fitted.status
    if fitted.reason:
        metrics["status_reason"] = fitted.reason
    if fitted.status == "collapsed":
        metrics["collapse"] = fitted.reason
    metrics.update(extra_metrics or {})
    if started is not None:
        metrics["wall_time_s"] = round(time.perf_counter() - started, 3)
    if trainer.is_global_zero and fitted.loggers:
        numbers = {
            k: int(v) if isinstance(v, bool) else v for k, v in metrics.items() if isinstance(v, (int, float))
        }
        for lg in fitted.loggers:
            lg.log_metrics(numbers)
    return metrics


def load_module(cfg: DictConfig, dm, ckpt_path: str | Path) -> RecommenderModule:
    """The run's model with a checkpoint's weights, built on the graphs the checkpoint names.

    ``cfg`` is the run's config (``config_resolved.yaml``). The graphs are read from the
    artifact cache by the keys the checkpoint records and checked against its sha256s: a
    missing or different graph is an error, never a silent rebuild.
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    names = ckpt.get("egra_graphs") or {}
    mats = load_named(cfg.paths.artifact_dir, names)
    graphs = Graphs(
        spec=GraphSpec.of(cfg.model),
        modality={n.split("/", 1)[1]: g for n, g in mats.items() if n.startswith("S^m/")},
        pretrained=mats.get("S^pt"),
        artifacts={n: ref["artifact"] for n, ref in names.items()},
    )
    net = build_net(constructor_config(cfg.model), dm, graphs.model_inputs())
    module = build_module(cfg, dm, net, graphs.names())
    module.on_load_checkpoint(ckpt)  # checks the graphs once more, by content
    module.load_state_dict(ckpt["state_dict"])
    return module
