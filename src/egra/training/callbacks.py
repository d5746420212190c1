"""Callbacks: the epoch-level alignment weight λ(t), the collapse guard, loss-term diagnostics,
the refresh of EGRA's item graph from its own vectors (``graph_source=self``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch

from egra.data.interactions import TRAIN, VALID
from egra.metrics.popularity import mostpop_metrics

log = logging.getLogger(__name__)


def lambda_at(
    epoch: int, lambda_min: float, lambda_max: float, P: int, ramp: str = "linear", warmup: int = 0
) -> float:
    """``λ(t)``: from ``λ_min`` at epoch 0 to ``λ_max`` at epoch ``P`` (0-based), then constant.

    ``warmup`` epochs of ``λ = 0`` (BPR alone) come first; the ramp then starts at epoch
    ``warmup`` (``t`` counts from there).

    ``linear``: ``λ_min + (λ_max − λ_min)·min(1, t/P)``; ``cosine``: the same progress eased
    by ``(1 − cos(π·p))/2``; ``step``: ``λ_min`` before epoch ``P``, ``λ_max`` from it on.
    ``P = 0`` means constant ``λ_max``.
    """
    if epoch < warmup:
        return 0.0
    epoch -= warmup
    if P <= 0:
        return float(lambda_max)
    progress = min(1.0, max(0, epoch) / P)
    if ramp == "linear":
        shape = progress
    elif ramp == "cosine":
        shape = (1.0 - math.cos(math.pi * progress)) / 2.0
    elif ramp == "step":
        shape = 1.0 if progress >= 1.0 else 0.0
    else:
        raise ValueError(f"ramp must be 'linear', 'cosine' or 'step', got {ramp!r}")
    return float(lambda_min + (lambda_max - lambda_min) * shape)


class AlignmentSchedule(L.Callback):
    """Sets ``net.align_weight = λ(current_epoch)`` at every epoch start and logs ``align/lambda``.

    The value depends on the epoch alone, so a resumed run gets the same schedule. The
    schedule's parameters are the model's (``lambda_min``, ``lambda_max``, ``P``, ``ramp``);
    models without ``align_weight`` are left alone.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", None)
        if net is None or not hasattr(net, "align_weight"):
            return
        lam = lambda_at(
            trainer.current_epoch,
            net.lambda_min,
            net.lambda_max,
            net.P,
            net.ramp,
            getattr(net, "lambda_warmup", 0),
        )
        net.align_weight = lam
        pl_module.log("align/lambda", lam, on_step=False, on_epoch=True)


#: The attribute holding a model's contrastive-term weight: EGRA's λ(t), MGCN's cl_loss.
CONTRASTIVE_WEIGHTS = ("align_weight", "cl_loss")


def contrastive_weight_name(net) -> str | None:
    """Which of :data:`CONTRASTIVE_WEIGHTS` the model has (None: no contrastive term)."""
    return next((a for a in CONTRASTIVE_WEIGHTS if hasattr(net, a)), None)


class CollapseGuard(L.Callback):
    """Stops a run that has collapsed or diverged, says why, and names what to change.

    ``status`` (``None`` while healthy) is what the train stage writes to ``metrics.json``,
    with ``reason`` (one line, also logged as one warning):

    * ``diverged``, for every model: at a validation the user or item representations are
      not finite or have grown beyond ``max_abs`` (their scores explode), or an epoch's
      mean training loss is not finite (checked at every validation and once more when the
      fit ends). The values come from the module's per-epoch and per-evaluation reductions
      (``train_epoch_loss``, ``eval_scale``): nothing is added to a training step.
    * ``collapsed``, for models with a contrastive term: checked once the weight has
      reached its full value (EGRA: after ``lambda_warmup + P`` epochs; MGCN: from the
      start) and the run has taken ``min_steps`` optimizer steps (a healthy run's BPR loss
      also starts at ``ln 2`` and its Recall@20 below MostPop's): for ``patience``
      validations in a row without a new best valid Recall@20, the BPR loss of the last
      epoch is within ``bpr_tol`` (relative) of ``ln 2`` -- positives and negatives score
      alike -- or valid Recall@20 is below MostPop's on the same split (a slow but healthy
      start improves every epoch and never counts).

    Training then stops; the best-valid checkpoint is still evaluated.
    """

    BPR_KEY, SCORE_KEY, LOSS_KEY = "train/loss_bpr", "valid/Recall@20", "train/loss"

    def __init__(
        self,
        patience: int = 3,
        bpr_tol: float = 0.01,
        mostpop: bool = True,
        min_steps: int = 100,
        max_abs: float = 1.0e4,
    ):
        if patience < 1:
            raise ValueError(f"collapse_guard.patience must be >= 1, got {patience}")
        if not max_abs > 0:
            raise ValueError(f"collapse_guard.max_abs must be > 0, got {max_abs}")
        self.patience, self.bpr_tol, self.mostpop = int(patience), float(bpr_tol), bool(mostpop)
        self.min_steps = int(min_steps)
        self.max_abs = float(max_abs)
        self.status: str | None = None
        self.reason: str | None = None
        self.mostpop_score: float | None = None
        self._strikes = 0
        self._best = -math.inf

    def state_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "strikes": self._strikes, "best": self._best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.reason, self._strikes = state_dict.get("reason"), int(state_dict.get("strikes", 0))
        self.status = state_dict.get("status", "collapsed" if self.reason else None)
        self._best = float(state_dict.get("best", -math.inf))

    def _stop(self, trainer, status: str, reason: str) -> None:
        self.status, self.reason = status, reason
        log.warning("%s", reason)
        trainer.should_stop = True

    def _divergence(self, trainer, pl_module) -> str | None:
        """Why the run has diverged, or None."""
        epoch = trainer.current_epoch
        lr = "lower optim.optimizer.lr"
        scale = getattr(pl_module, "eval_scale", None)
        if scale is not None and not math.isfinite(scale):
            return (
                f"diverged at epoch {epoch}: the user/item representations are not finite (NaN or inf); {lr}"
            )
        if scale is not None and scale > self.max_abs:
            return (
                f"diverged at epoch {epoch}: the user/item representations reached |x| = {scale:.3g} "
                f"(> callbacks.collapse_guard.max_abs={self.max_abs:g}), so their scores explode; {lr}"
            )
        losses = getattr(pl_module, "train_epoch_loss", None) or {}
        bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
        if bad:
            return f"diverged by epoch {epoch}: training loss {', '.join(bad)} is not finite; {lr}"
        return None

    @staticmethod
    def _fitting(trainer) -> bool:
        state = getattr(trainer, "state", None)
        return state is None or getattr(state, "fn", "fit") == "fit"  # not the final evaluation

    def on_train_end(self, trainer, pl_module) -> None:
        # The last epochs may have had no validation: their training loss still counts.
        if self.status is None:
            why = self._divergence(trainer, pl_module)
            if why is not None:
                self._stop(trainer, "diverged", why)

    @staticmethod
    def _weight(net) -> tuple[str, float, int] | None:
        """(config key, its value, first epoch at full weight) or None without a contrastive term."""
        attr = contrastive_weight_name(net)
        if attr == "align_weight":
            return (
                "lambda_max",
                float(net.lambda_max),
                int(getattr(net, "lambda_warmup", 0)) + max(0, int(net.P)),
            )
        if attr == "cl_loss":
            return "cl_loss", float(net.cl_loss), 0
        return None

    def on_fit_start(self, trainer, pl_module) -> None:
        data = getattr(getattr(trainer, "datamodule", None), "data", None)
        if not self.mostpop or data is None or self._weight(pl_module.net) is None:
            return
        (tu, ti), (vu, vi) = data.pairs(TRAIN), data.pairs(VALID)
        self.mostpop_score = mostpop_metrics(tu, ti, vu, vi, data.n_items, ks=(20,))["Recall@20"]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.status is not None or not self._fitting(trainer):
            return
        why = self._divergence(trainer, pl_module)
        if why is not None:
            self._stop(trainer, "diverged", why)
            return
        weight = self._weight(pl_module.net)
        if weight is None:
            return
        key, value, full_from = weight
        metrics = trainer.callback_metrics
        bpr, score = metrics.get(self.BPR_KEY), metrics.get(self.SCORE_KEY)
        improved = score is not None and float(score) > self._best
        if score is not None:
            self._best = max(self._best, float(score))
        if trainer.current_epoch < full_from or trainer.global_step < self.min_steps or improved:
            self._strikes = 0
            return
        signs = []
        if bpr is not None and abs(float(bpr) - math.log(2)) <= self.bpr_tol * math.log(2):
            signs.append(f"train BPR loss {float(bpr):.4f} ≈ ln 2")
        if score is not None and self.mostpop_score is not None and float(score) < self.mostpop_score:
            signs.append(f"valid Recall@20 {float(score):.4f} < MostPop's {self.mostpop_score:.4f}")
        self._strikes = self._strikes + 1 if signs else 0
        if self._strikes < self.patience:
            return
        hint = f"model.{key}={value / 10:g}"
        if key == "lambda_max":
            hint += " or model.align_scale=chance"
        self._stop(
            trainer,
            "collapsed",
            f"collapsed at epoch {trainer.current_epoch}: {'; '.join(signs)} for {self.patience} "
            f"validations; the contrastive weight model.{key}={value:g} dominates training: try {hint}",
        )


def _global_norm(grads) -> float:
    """The L2 norm of several gradient tensors taken together."""
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


class TermGradients(L.Callback):
    """Diagnostics: gradient norms of the ranking loss and of the weighted contrastive term.

    On the first batch of every epoch the batch's loss is computed twice, with the
    contrastive weight set to 0 and as scheduled; the gradients of the first (BPR + L2)
    and of the difference (weight · contrastive term) on the shared ID tables are logged
    as ``diag/grad_bpr`` and ``diag/grad_align`` with their ratio ``diag/grad_ratio``.
    Costs two extra forward/backward passes per epoch; off unless added to ``callbacks``.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        net = getattr(pl_module, "net", None)
        attr = contrastive_weight_name(net) if net is not None else None
        if batch_idx != 0 or attr is None:
            return
        tables = [p for name, p in net.named_parameters() if name in ("user_emb", "item_emb")]
        weight = getattr(net, attr)
        users, pos, neg = batch[0], batch[1], batch[2]
        try:
            setattr(net, attr, 0.0)
            g_rank = torch.autograd.grad(net.loss(users, pos, neg)["loss"], tables)
        finally:
            setattr(net, attr, weight)
        g_all = torch.autograd.grad(net.loss(users, pos, neg)["loss"], tables)
        n_rank = _global_norm(g_rank)
        n_align = _global_norm([a - r for a, r in zip(g_all, g_rank)])
        pl_module.log_dict(
            {
                "diag/grad_bpr": n_rank,
                "diag/grad_align": n_align,
                "diag/grad_ratio": n_align / max(n_rank, 1e-30),
            },
            on_step=False,
            on_epoch=True,
        )


class FitClock(L.Callback):
    """Training seconds across resumes: checkpoints carry the time spent before them, so a
    resumed run's ``fit_time_s`` counts the epochs before the kill too."""

    def __init__(self) -> None:
        self.before_s = 0.0
        self._start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def elapsed_s(self) -> float:
        return self.before_s + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict[str, float]:
        return {"fit_time_s": self.elapsed_s()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.before_s = float(state_dict.get("fit_time_s", 0.0))


def edge_overlap(new: sp.spmatrix, old: sp.spmatrix | None) -> float:
    """Fraction of ``new``'s edges (non-zero positions) that ``old`` has too; 0 without ``old``."""
    new = sp.csr_matrix(new)
    if old is None or new.nnz == 0:
        return 0.0
    both = new.astype(bool).multiply(sp.csr_matrix(old).astype(bool))
    return float(both.nnz / new.nnz)


class GraphRefresh(L.Callback):
    """``graph_source=self``: rebuilds the model's item graph ``S^pt`` from its own item vectors.

    At the start of every training epoch ``t > 0`` with ``t % every == 0`` the model's item
    rows (``net.export()``: eval mode, no gradient, the vectors it scores with) go through
    ``build`` (``vectors [I, d] -> S^pt``, the pipeline's kNN graph builder) and the graph is
    handed to ``net.set_item_graph``. Logs ``graph/refresh_s``, ``graph/edges`` and
    ``graph/overlap`` (the fraction of the new graph's edges the previous one had; 0 when
    there was none).

    Which epochs refresh depends on the epoch alone, and the model's current graph is in
    every checkpoint (the callback sets ``pl_module.item_graph_in_checkpoint``; see
    ``RecommenderModule.on_save_checkpoint``), so a resumed run, and the evaluation of the
    best checkpoint, use the graph that epoch trained on. Under DDP rank 0 builds the graph
    and broadcasts it: every rank holds the same one.
    """

    def __init__(self, every: int, build: Callable[[np.ndarray], sp.csr_matrix]):
        if int(every) < 1:
            raise ValueError(f"graph_refresh_every must be >= 1, got {every}")
        self.every = int(every)
        self.build = build
        self.refreshes = 0
        self.refresh_s = 0.0
        self.edges = 0

    def refresh_epoch(self, epoch: int) -> bool:
        """Whether training epoch ``epoch`` (0-based) starts with a rebuilt ``S^pt``."""
        return epoch > 0 and epoch % self.every == 0

    def state_dict(self) -> dict:
        return {"refreshes": self.refreshes, "refresh_s": self.refresh_s, "edges": self.edges}

    def load_state_dict(self, state_dict: dict) -> None:
        self.refreshes = int(state_dict.get("refreshes", 0))
        self.refresh_s = float(state_dict.get("refresh_s", 0.0))
        self.edges = int(state_dict.get("edges", 0))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.item_graph_in_checkpoint = True

    def graph_of(self, net) -> sp.csr_matrix:
        """``S^pt`` of the model's current item vectors."""
        items = net.export()[1]
        return self.build(items.detach().float().cpu().numpy())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.refresh_epoch(trainer.current_epoch):
            return
        net = pl_module.net
        built = None
        if trainer.is_global_zero:
            t0 = time.perf_counter()
            graph = self.graph_of(net)
            built = (graph, time.perf_counter() - t0)
        graph, seconds = trainer.strategy.broadcast(built, src=0)
        overlap = edge_overlap(graph, net.item_graph)
        net.set_item_graph(graph)
        self.refreshes += 1
        self.refresh_s += seconds
        self.edges = int(graph.nnz)
        log.info(
            "epoch %d: S^pt rebuilt from the model's item vectors: %d edges, %.0f%% kept (%.2fs)",
            trainer.current_epoch,
            graph.nnz,
            100 * overlap,
            seconds,
        )
        pl_module.log_dict(
            {"graph/refresh_s": float(seconds), "graph/edges": float(graph.nnz), "graph/overlap": overlap},
            on_step=False,
            on_epoch=True,
        )

    def summary(self) -> dict[str, float | int]:
        """For metrics.json: refreshes done, their total seconds, the last graph's edges."""
        return {
            "graph_refreshes": self.refreshes,
            "graph_refresh_s": round(self.refresh_s, 3),
            "graph_refresh_edges": self.edges,
        }
