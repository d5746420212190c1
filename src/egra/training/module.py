"""One LightningModule for every recommender: BPR steps, full-ranking evaluation, logging.

Evaluation follows MMRec: score every item for each evaluated user, mask the user's
train items (``-inf``), find where each held-out item lands in the ranking and
macro-average Recall/NDCG/Precision/MAP/Hit@K over the users of the split. The position of
a held-out item is counted (items scored above it, ties by item id) rather than read off
a top-K list: the same hits as ``torch.topk`` without its partial sort of every row.
Under DDP each rank scores a disjoint set of users and the per-metric *sums and counts*
are all-reduced, so every user counts exactly once. The reduced keys are a fixed list
derived from the configuration (metrics x ks, popularity groups x group_ks), so every rank
sends the same tensor even when it has no users, or none of some popularity group.

Training under DDP: each rank's loss is weighted by its share of the step's global batch
(:func:`share_weight`), so DDP's gradient average is the gradient of the global batch's
mean loss, as on one device; logged training losses are row-weighted means over all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from egra.metrics import DEFAULT_KS, METRICS, rank_metric_rows, truth_keys, truth_ranks
from egra.models.base import Recommender

#: Trainer precisions supported: full fp32, or mixed precision (autocast), under which the
#: custom autograd ops (sparse graph products, counted InfoNCE) and evaluation run in fp32.
#: Half-precision *parameters* ("16-true", "bf16-true") are not: the graph ops are fp32.
SUPPORTED_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed")


def check_precision(precision: object) -> None:
    """Raise a one-line ``ValueError`` for a ``trainer.precision`` the models cannot train in."""
    if str(precision) not in SUPPORTED_PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision} is not supported: use one of {', '.join(SUPPORTED_PRECISIONS)}"
        )


def share_weight(rows: Tensor, global_rows: Tensor, world: int) -> Tensor:
    """Factor for a rank's mean loss over ``rows`` of a step's ``global_rows``.

    DDP averages gradients over ``world`` ranks, so ``world · rows / global_rows`` makes the
    result ``Σ_r rows_r / global_rows · ∇mean_r``: the gradient of the mean over the
    global batch. 1 when the shares are equal.
    """
    return rows.to(torch.float32) * world / global_rows.to(torch.float32)


def eval_keys(ks: Sequence[int], n_groups: int = 0, group_ks: Sequence[int] = ()) -> list[str]:
    """Every key an evaluation can accumulate, in a fixed order (the same on every rank)."""
    keys = [f"{m}@{k}" for m in METRICS for k in ks] + ["#users"]
    for g in range(n_groups):
        keys += [f"popgroup{g}/{m}@{k}" for m in METRICS for k in group_ks] + [f"popgroup{g}/#users"]
    return keys


#: spawn key of the per-epoch generator handed to a model's epoch hook: a stream apart from
#: the BPR sampler's (which draws from ``default_rng([seed, epoch(, rank)])``).
NET_EPOCH_STREAM = 1


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator a model's ``on_train_epoch_start(epoch, rng)`` gets: a pure function of
    ``(seed, epoch)``, the same on every rank and after a resume."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), int(epoch)], spawn_key=(NET_EPOCH_STREAM,))
    )


#: Checkpoint key of the model's current item graph ``S^pt`` when it changes during training.
ITEM_GRAPH_KEY = "egra_item_graph"


def graph_to_state(graph: sp.spmatrix | None) -> dict[str, Tensor] | None:
    """A sparse graph as CSR tensors (what ``torch.load(weights_only=True)`` reads back)."""
    if graph is None:
        return None
    g = sp.csr_matrix(graph, dtype=np.float32)
    return {
        "shape": torch.tensor(g.shape, dtype=torch.long),
        "indptr": torch.from_numpy(g.indptr.astype(np.int64)),
        "indices": torch.from_numpy(g.indices.astype(np.int64)),
        "data": torch.from_numpy(g.data.copy()),
    }


def graph_from_state(state: Mapping[str, Tensor] | None) -> sp.csr_matrix | None:
    """Inverse of :func:`graph_to_state`."""
    if state is None:
        return None
    shape = tuple(int(n) for n in state["shape"])
    arrays = (state["data"].numpy(), state["indices"].numpy(), state["indptr"].numpy())
    return sp.csr_matrix(arrays, shape=shape, dtype=np.float32)


class GraphMismatchError(ValueError):
    """A checkpoint was trained on other graphs than the model it is loaded into."""


def check_graphs(
    saved: Mapping[str, Mapping[str, str]] | None, have: Mapping[str, Mapping[str, str]]
) -> None:
    """Raise unless the graphs a checkpoint names (``saved``) are the model's (``have``).

    Graphs are compared by content (sha256); ``saved`` None is a checkpoint from before
    graphs were recorded, accepted as is.
    """
    if saved is None:
        return
    for name in sorted(set(saved) | set(have)):
        if name not in have:
            raise GraphMismatchError(
                f"the checkpoint was trained on graph {name} (artifact {saved[name].get('artifact')}), "
                "which this model does not have: build the model with the checkpoint's graph config"
            )
        if name not in saved:
            raise GraphMismatchError(f"this model uses graph {name}, which the checkpoint was not trained on")
        if saved[name]["sha256"] != have[name]["sha256"]:
            raise GraphMismatchError(
                f"graph {name} differs from the one the checkpoint was trained on (checkpoint: artifact "
                f"{saved[name].get('artifact')}, sha256 {saved[name]['sha256'][:12]}; this model: artifact "
                f"{have[name].get('artifact')}, sha256 {have[name]['sha256'][:12]})"
            )


class RecommenderModule(L.LightningModule):
    """``graphs`` names the item-item graphs ``net`` was built on (name -> ``{"artifact": key,
    "sha256": content digest}``); checkpoints carry them and loading one checks them.

    Per-epoch model work: a ``net`` with a method ``on_train_epoch_start(epoch, rng)`` has it
    called at the start of every training epoch, with ``rng = epoch_rng(seed, epoch)`` (FREEDOM
    resamples its user-item graph there). Nothing of it is checkpointed: a resumed run redraws
    the same epoch's randomness from ``(seed, epoch)``.
    """

    def __init__(
        self,
        net: Recommender,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_decay: Sequence[float] = (1.0, 50.0),
        ks: Sequence[int] = DEFAULT_KS,
        item_groups: Tensor | None = None,
        group_ks: Sequence[int] = (20,),
        graphs: Mapping[str, Mapping[str, str]] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.seed = int(seed)
        self.graphs = {str(k): dict(v) for k, v in (graphs or {}).items()}
        self.net = net
        self.optimizer_factory = optimizer
        self.lr_decay = (float(lr_decay[0]), float(lr_decay[1]))
        self.ks = tuple(int(k) for k in ks)
        self.group_ks = tuple(int(k) for k in group_ks)
        if item_groups is not None:
            self.register_buffer(
                "item_groups", torch.as_tensor(item_groups, dtype=torch.long), persistent=False
            )
        else:
            self.item_groups = None
        self.best_epoch = -1
        self.best_score = float("-inf")
        self._emb: tuple[Tensor, Tensor] | None = None
        self._score_buf: Tensor | None = None  # reused by the evaluation blocks
        self._sums: dict[str, Tensor] = {}
        self._train_sums: dict[str, Tensor] = {}
        self._train_rows = 0
        self._prefix = "valid"  # the evaluation loop running ("valid" | "test"), set at its start
        self.per_user_test: dict[str, list[Tensor]] = {}
        #: Mean of every training loss term over the last finished epoch (``train/loss``, ...).
        self.train_epoch_loss: dict[str, float] = {}
        #: Largest ``|x|`` of the user and item representations at the last evaluation: NaN
        #: or inf when they are not finite (their metrics are then NaN, never scored).
        self.eval_scale = 0.0
        #: Set by a callback that changes the model's item graph during training (GraphRefresh):
        #: checkpoints then carry the model's current ``S^pt``, and loading one restores it.
        self.item_graph_in_checkpoint = False

    # -- training --------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_rows = {}, 0
        hook = getattr(self.net, "on_train_epoch_start", None)
        if callable(hook):
            hook(self.current_epoch, epoch_rng(self.seed, self.current_epoch))

    def setup(self, stage: str) -> None:
        # Before any step (a config validator can call check_precision earlier still).
        check_precision(self.trainer.precision)

    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        users, pos, neg = batch[0], batch[1], batch[2]
        b, world = users.shape[0], self._world()
        if world > 1:
            # The step's global batch size (shares can differ by a row, or be empty at the
            # end of an epoch): one small all-reduce, no host sync.
            rows = torch.tensor(b, device=users.device)
            global_rows = self.trainer.strategy.reduce(rows.clone(), reduce_op="sum")
            if b == 0:
                # An empty share: zero gradients, but every parameter takes part, as DDP needs.
                return sum(p.sum() for p in self.net.parameters() if p.requires_grad) * 0.0
        out = self.net.loss(users, pos, neg)
        loss = out["loss"]
        # No finiteness check here: it would wait for the device every step. The epoch's
        # summed losses carry a NaN/inf to on_train_epoch_end, where the collapse guard
        # (training.callbacks.CollapseGuard) reads train_epoch_loss.
        # "term" -> train/loss_term; a key with a "/" ("align/weight_mean") is logged as is.
        # Epoch means weighted by batch size, as log(on_epoch=True, batch_size=B) gives, but
        # summed here and logged once per epoch: Lightning's per-step log() costs more than
        # a LightGCN step's arithmetic.
        logs = {"train/loss": loss.detach()}
        logs.update({(k if "/" in k else f"train/loss_{k}"): v for k, v in out.items() if k != "loss"})
        sums = self._train_sums
        for key, value in logs.items():
            value = value.detach().to(torch.float64) * b
            sums[key] = sums[key] + value if key in sums else value
        self._train_rows += b
        if world > 1:
            loss = loss * share_weight(rows, global_rows, world)
        return loss

    def on_train_epoch_end(self) -> None:
        keys = sorted(self._train_sums)
        rows = torch.tensor(float(self._train_rows), dtype=torch.float64, device=self.device)
        packed = torch.stack([self._train_sums[k].to(self.device) for k in keys] + [rows])
        if self._world() > 1:
            # Row-weighted means over all ranks. Every rank has the same keys: each one
            # saw at least one non-empty share (the first step's global batch >= world).
            packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        host = packed.tolist()  # the epoch's one wait for the device
        if host[-1] > 0:
            means = {k: (v / packed[-1]).to(torch.float32) for k, v in zip(keys, packed[:-1])}
            self.log_dict(means, on_step=False, on_epoch=True)
            self.train_epoch_loss = {k: v / host[-1] for k, v in zip(keys, host[:-1])}
        self._train_sums, self._train_rows = {}, 0

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        a, b = self.lr_decay
        # MMRec's LambdaLR: epoch e trains with lr · a^(e/b), stepped after each epoch.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda e: a ** (e / b))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- evaluation -------------------------------------------------------------------------
    def _start_eval(self) -> None:
        with torch.no_grad():
            u, i = self.net.embeddings()
        # fp32 at least: under mixed precision the propagation may hand back bf16/fp16 rows.
        dtype = torch.promote_types(torch.promote_types(u.dtype, i.dtype), torch.float32)
        self._emb = (u.detach().to(dtype), i.detach().to(dtype))
        self._sums = {}
        # One wait per evaluation: NaN propagates through amax, so a non-finite table shows.
        self.eval_scale = float(torch.maximum(u.detach().abs().amax(), i.detach().abs().amax()))
        if not math.isfinite(self.eval_scale):
            self._emb = None  # nothing to rank: NaN scores would rank every held-out item first

    def _add(self, key: str, value: Tensor) -> None:
        value = value.detach().to(torch.float64)
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    #: users scored, masked and ranked at a time inside an evaluation chunk (the size of
    #: the one score buffer they share: ~58 MB on Baby).
    SCORE_BLOCK = 2048

    def _truth_ranks(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Distinct truth pairs of a chunk, ``(rows, items, ranks)``, ranked among unmasked items.

        A held-out item's rank is the number of items scored above it (ties by item id,
        :func:`egra.metrics.truth_ranks`), on the scores with train items at ``-inf``:
        the position it has in the full ranking, so metrics need no top-K selection.
        """
        assert self._emb is not None
        users, n_items = batch["users"], self.net.n_items
        keys = truth_keys(batch["truth_rows"], batch["truth_items"], users.shape[0], n_items)
        rows, items = keys // n_items, keys % n_items
        mask_rows, mask_items = batch["mask_rows"], batch["mask_items"]
        if mask_rows.numel() > 1 and bool((mask_rows[1:] < mask_rows[:-1]).any()):
            order = torch.argsort(mask_rows, stable=True)
            mask_rows, mask_items = mask_rows[order], mask_items[order]
        n, step = users.shape[0], self.SCORE_BLOCK
        starts = torch.arange(0, n + step, step, device=rows.device).clamp_(max=n)
        mask_cuts = torch.searchsorted(mask_rows, starts.to(mask_rows.device)).tolist()
        truth_cuts = torch.searchsorted(rows, starts).tolist()
        ranks = torch.empty_like(rows)
        u_emb, i_emb = self._emb
        if self._score_buf is None or self._score_buf.shape[0] < min(n, step):
            self._score_buf = u_emb.new_empty(
                (min(n, step), n_items), dtype=torch.promote_types(u_emb.dtype, i_emb.dtype)
            )
        for blk, start in enumerate(range(0, n, step)):
            block = users[start : start + step]
            scores = self.net.score(u_emb, i_emb, block, out=self._score_buf[: block.shape[0]])
            lo, hi = mask_cuts[blk], mask_cuts[blk + 1]
            scores[mask_rows[lo:hi] - start, mask_items[lo:hi]] = float("-inf")
            lo, hi = truth_cuts[blk], truth_cuts[blk + 1]
            ranks[lo:hi] = truth_ranks(scores, rows[lo:hi] - start, items[lo:hi])
        return rows, items, ranks

    def _eval_step(self, batch: dict) -> None:
        if self._emb is None:  # representations not finite (see _start_eval): metrics are NaN
            return
        # Scores and ranks in fp32 even under mixed precision: bf16 scores would tie items
        # that fp32 tells apart and move held-out items in the ranking.
        with torch.autocast(batch["users"].device.type, enabled=False):
            rows, items, ranks = self._truth_ranks(batch)
        n = batch["users"].shape[0]
        test = self._prefix == "test"
        self._accumulate(rows, ranks, n, self.ks, users=batch["users"] if test else None)
        if self.item_groups is not None and test:
            groups = self.item_groups[items]
            for g in range(int(self.item_groups.max()) + 1):
                keep = groups == g
                self._accumulate(rows[keep], ranks[keep], n, self.group_ks, tag=f"popgroup{g}/")

    def _accumulate(
        self,
        rows: Tensor,
        ranks: Tensor,
        n_rows: int,
        ks: Sequence[int],
        tag: str = "",
        users: Tensor | None = None,
    ) -> None:
        """Add a chunk's metric sums; given the chunk's ``users``, also keep each user's
        Recall/NDCG@K in ``per_user_test`` (for paired per-user tests across models)."""
        keep, per_row = rank_metric_rows(rows, ranks, n_rows, ks)
        if keep.numel() == 0:
            return
        for key, val in per_row.items():
            self._add(tag + key, val.sum())
        self._add(tag + "#users", torch.tensor(keep.numel(), device=ranks.device))
        if users is not None:
            self.per_user_test.setdefault("users", []).append(users[keep].cpu())
            for key, value in per_row.items():
                if key.startswith(("Recall@", "NDCG@")):
                    self.per_user_test.setdefault(key, []).append(value.cpu())

    def _eval_key_list(self) -> list[str]:
        n_groups = 0
        if self.item_groups is not None and self._prefix == "test" and self.item_groups.numel():
            n_groups = int(self.item_groups.max()) + 1
        return eval_keys(self.ks, n_groups, self.group_ks)

    def _finish_eval(self, prefix: str) -> dict[str, float]:
        if self._emb is None:
            # Not finite (the same on every rank: nothing to reduce): every metric NaN, which
            # the checkpoint callback ranks last and early stopping stops on.
            self._score_buf, self._sums = None, {}
            return {f"{prefix}/{m}@{k}": math.nan for m in METRICS for k in self.ks}
        keys = self._eval_key_list()
        unknown = set(self._sums) - set(keys)
        assert not unknown, f"evaluation produced keys outside the fixed list: {sorted(unknown)}"
        if self.trainer is not None and self.trainer.world_size > 1:
            # Sums and counts of the fixed key list (zeros for what this rank did not see),
            # on this rank's device, reduced once: exact under any sharding of users.
            zero = torch.zeros((), dtype=torch.float64, device=self.device)
            packed = torch.stack([self._sums.get(k, zero).to(self.device) for k in keys])
            packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
            self._sums = dict(zip(keys, packed))
        out: dict[str, float] = {}
        for key in keys:
            if key.endswith("#users") or key not in self._sums:
                continue
            tag = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            n_users = self._sums[tag + "#users"]
            if n_users > 0:  # a group no evaluated user has a held-out item in has no metric
                out[f"{prefix}/{key}"] = float(self._sums[key] / n_users)
        self._emb = None
        self._score_buf = None
        self._sums = {}
        return out

    def on_validation_epoch_start(self) -> None:
        self._prefix = "valid"
        self._start_eval()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._finish_eval("valid")
        if not metrics:
            return
        # Every rank holds the same reduced values, so no further syncing is needed.
        self.log_dict(metrics, sync_dist=False)
        score = metrics.get("valid/Recall@20", next(iter(metrics.values())))
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit" and score > self.best_score:
            self.best_score, self.best_epoch = score, self.current_epoch

    def on_test_epoch_start(self) -> None:
        self._prefix = "test"
        #: per test user of this rank: "users" and "Recall@K"/"NDCG@K" chunks (see _accumulate)
        self.per_user_test: dict[str, list[Tensor]] = {}
        self._start_eval()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._finish_eval("test"), sync_dist=False)

    # -- checkpoint state -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["egra_best"] = {"epoch": self.best_epoch, "score": self.best_score}
        checkpoint["egra_graphs"] = self.graphs
        if self.item_graph_in_checkpoint:
            checkpoint[ITEM_GRAPH_KEY] = graph_to_state(self.net.item_graph)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_graphs(checkpoint.get("egra_graphs"), self.graphs)
        best = checkpoint.get("egra_best", {})
        self.best_epoch = int(best.get("epoch", -1))
        self.best_score = float(best.get("score", float("-inf")))
        if ITEM_GRAPH_KEY in checkpoint:
            # The S^pt the checkpoint's weights trained with (graph_source=self rebuilds it).
            self.net.set_item_graph(graph_from_state(checkpoint[ITEM_GRAPH_KEY]))
