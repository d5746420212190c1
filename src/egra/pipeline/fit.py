"""Fitting shared by every stage that trains a model (the backbone in pretrain, the model in
the train pipeline): model and LightningModule from config, a Lightning fit with early
stopping and checkpoints. Evaluation on the best checkpoint is ``egra.pipeline.evaluate``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from egra.data import DataError
from egra.metrics import popularity_groups
from egra.pipeline.checkpoints import LAST, checkpoint_plugins, damage, newest_intact, remove_partial_writes
from egra.pipeline.history import keep_csv_history
from egra.training.callbacks import CollapseGuard, FitClock
from egra.training.module import RecommenderModule

log = logging.getLogger(__name__)

# Keys of a model config that configure its training recipe, not its constructor.
RECIPE_KEYS = ("lr_decay", "init")
#: ``status`` of a run in metrics.json: ``ok``; ``collapsed`` / ``diverged`` (the collapse
#: guard stopped the fit, ``egra.training.callbacks.CollapseGuard``); ``no_validation`` (no
#: validation ran, so nothing chose the weights that were tested).
STATUSES = ("ok", "collapsed", "diverged", "no_validation")
#: ``model.init``: ``scratch`` (the constructor's initialisation) or ``backbone`` (start from
#: the weights of the backbone ``S^pt`` came from, wherever name and shape agree).
INITS = ("scratch", "backbone")
# Tables a warm start must find in the backbone, or it is not a warm start at all.
SHARED_TABLES = ("user_emb", "item_emb")


def lr_decay(cfg: DictConfig) -> tuple[float, float]:
    """``optim.lr_decay`` if set, else the model's recipe (MGCN/EGRA: MMRec's [0.96, 50]), else constant."""
    value = cfg.optim.get("lr_decay") or cfg.model.get("lr_decay") or (1.0, 50.0)
    return float(value[0]), float(value[1])


def build_net(model_cfg: DictConfig, dm, inputs: Mapping[str, Any] | None = None):
    """The plain model: ``model_cfg`` (a ``_partial_`` constructor config) called with the
    data's inputs and ``inputs`` (graphs from the graph stage)."""
    ctor = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k not in RECIPE_KEYS])
    factory = instantiate(ctor)
    return factory(**dm.model_inputs(), **dict(inputs or {}))


def warm_start(net, state: Mapping[str, Any], source: str) -> list[str]:
    """Copy every tensor of ``state`` (a backbone's weights) whose name and shape match one
    of ``net``'s; return the names copied. The ID tables must match (same ``embedding_dim``):
    a warm start that copies neither is refused."""
    own = net.state_dict()
    loaded = {
        k: torch.as_tensor(v) for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)
    }
    missing = [k for k in SHARED_TABLES if k in own and k not in loaded]
    if missing:
        absent = [k for k in missing if k not in state]
        if absent:
            raise ValueError(
                f"model.init=backbone: the {source} backbone has no {', '.join(absent)} "
                f"(its tensors: {', '.join(sorted(state)[:6])}, ...): start from scratch or use another graph_source"
            )
        raise ValueError(
            f"model.init=backbone: the {source} backbone's {', '.join(missing)} have shapes "
            f"{[tuple(state[k].shape) for k in missing]}, the model's {[tuple(own[k].shape) for k in missing]}: "
            "expected the same model.embedding_dim"
        )
    net.load_state_dict(loaded, strict=False)
    log.info("model.init=backbone: %d of %d tensors from %s", len(loaded), len(own), source)
    return sorted(loaded)


def build_module(
    cfg: DictConfig, dm, net, graphs: Mapping[str, Mapping[str, str]] | None = None
) -> RecommenderModule:
    """The LightningModule around ``net``; ``graphs`` names the graphs it was built on
    (``Graphs.names()``), recorded in and checked against its checkpoints."""
    groups = popularity_groups(dm.data.item_train_counts(), int(cfg.eval.n_pop_groups))
    return RecommenderModule(
        net=net,
        optimizer=instantiate(cfg.optim.optimizer),
        lr_decay=lr_decay(cfg),
        ks=tuple(cfg.eval.ks),
        item_groups=torch.as_tensor(groups),
        group_ks=tuple(cfg.eval.group_ks),
        graphs=graphs,
        seed=int(cfg.seed),
    )


@dataclass
class Fitted:
    """What a fit leaves for evaluation."""

    trainer: L.Trainer
    module: RecommenderModule
    best_path: str | None
    best_epoch: int
    epochs_run: int
    fit_s: float
    loggers: list = field(default_factory=list)
    out_dir: Path | None = None  # the run directory (per-user test metrics go there)
    #: metrics.json's ``status``: ``ok``, or what went wrong (:data:`STATUSES`) and ``reason``
    status: str = "ok"
    reason: str | None = None


def _callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c
    ]


def _loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]


def resolve_ckpt(cfg: DictConfig, out_dir: Path) -> str | None:
    """The checkpoint ``cfg.ckpt_path`` resumes from. ``last``: ``checkpoints/last.ckpt`` of
    ``out_dir``, or when it is damaged the newest intact checkpoint beside it (one warning
    line; none intact: a fresh start). A named file must be an intact checkpoint."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        ckpt_dir = out_dir / "checkpoints"
        remove_partial_writes(ckpt_dir)
        found, note = newest_intact(ckpt_dir)
        if note is not None:
            then = f"resuming from {found.name} instead" if found else "starting fresh"
            log.warning("ckpt_path=last: %s; %s", note, then)
        if found is not None:
            if note is None:
                log.info("resuming from %s", found)
            return str(found)
        if note is None:
            log.info("ckpt_path=last but %s does not exist yet: starting fresh", ckpt_dir / LAST)
        return None
    why = damage(ckpt)
    if why is not None:
        raise DataError(f"ckpt_path={ckpt}: {'no such checkpoint file' if why == 'missing' else why}")
    return str(ckpt)


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


def fit(
    cfg: DictConfig, dm, module: RecommenderModule, out_dir: Path, callbacks: Sequence[L.Callback] = ()
) -> Fitted:
    """Train ``module`` with ``cfg.trainer``, its callbacks (early stopping, checkpoints
    under ``out_dir``), the pipeline's ``callbacks`` (e.g. the graph refresh of
    ``graph_source=self``) and loggers; resume from ``cfg.ckpt_path`` when set."""
    t_start = time.perf_counter()
    clock = FitClock()  # issue 13 hook: fit_time_s adds up across resumes
    loggers = _loggers(cfg)
    ckpt_path = resolve_ckpt(cfg, out_dir)
    keep_csv_history(loggers, ckpt_path)  # issue 13 hook: the curve before a kill stays
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*_callbacks(cfg), *callbacks, clock],
        logger=loggers or False,
        plugins=checkpoint_plugins(cfg.trainer.get("plugins")),  # atomic checkpoint files
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    fit_s = clock.before_s + time.perf_counter() - t_start
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    best_epoch, epochs_run = _fit_summary(trainer, module)
    # Read now: evaluating the best checkpoint restores the callbacks' state of that (earlier)
    # epoch, which predates a collapse.
    guard = next((c for c in trainer.callbacks if isinstance(c, CollapseGuard)), None)
    status, reason = (guard.status, guard.reason) if guard is not None and guard.status else ("ok", None)
    if status == "ok" and best_epoch < 0:
        status, reason = "no_validation", _no_validation(cfg, epochs_run)
        log.warning("%s", reason)
    return Fitted(
        trainer, module, best, int(best_epoch), epochs_run, fit_s, loggers, Path(out_dir), status, reason
    )


def _no_validation(cfg: DictConfig, epochs_run: int) -> str:
    t = cfg.trainer
    every = t.get("check_val_every_n_epoch", 1)
    return (
        f"no validation ran in {epochs_run} epoch(s) (trainer.check_val_every_n_epoch={every}, "
        f"trainer.max_epochs={t.get('max_epochs')}): no best-valid checkpoint, valid and test "
        "scores are the last epoch's weights"
    )
