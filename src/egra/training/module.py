"""One LightningModule for every recommender: BPR steps, full-ranking evaluation, logging.

Evaluation follows MMRec: score every item for each evaluated user, mask the user's
train items (``-inf``), take the top ``max(ks)`` and macro-average Recall/NDCG/Precision/
MAP/Hit over the users of the split. Under DDP each rank scores a disjoint set of users
and the per-metric *sums and counts* are all-reduced, so every user counts exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor

from egra.metrics import DEFAULT_KS, chunk_metric_sums, group_truth
from egra.models.base import Recommender


class RecommenderModule(L.LightningModule):
    def __init__(
        self,
        net: Recommender,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_decay: Sequence[float] = (1.0, 50.0),
        ks: Sequence[int] = DEFAULT_KS,
        item_groups: Tensor | None = None,
        group_ks: Sequence[int] = (20,),
    ):
        super().__init__()
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
        self._sums: dict[str, Tensor] = {}
        self._train_sums: dict[str, Tensor] = {}
        self._train_rows = 0

    # -- training --------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_rows = {}, 0

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        users, pos, neg = batch[0], batch[1], batch[2]
        out = self.net.loss(users, pos, neg)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {self.current_epoch}")
        # "term" -> train/loss_term; a key with a "/" ("align/weight_mean") is logged as is.
        # Epoch means weighted by batch size, as log(on_epoch=True, batch_size=B) gives, but
        # summed here and logged once per epoch: Lightning's per-step log() costs more than
        # a LightGCN step's arithmetic.
        b = users.shape[0]
        logs = {"train/loss": loss.detach()}
        logs.update({(k if "/" in k else f"train/loss_{k}"): v for k, v in out.items() if k != "loss"})
        sums = self._train_sums
        for key, value in logs.items():
            value = value.detach().to(torch.float64) * b
            sums[key] = sums[key] + value if key in sums else value
        self._train_rows += b
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_rows:
            means = {k: (v / self._train_rows).to(torch.float32) for k, v in self._train_sums.items()}
            self.log_dict(means, on_step=False, on_epoch=True)
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
        self._emb = (u.detach(), i.detach())
        self._sums = {}

    def _add(self, key: str, value: Tensor) -> None:
        value = value.detach().to(torch.float64)
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    #: users scored, masked and ranked at a time inside an evaluation chunk. MKL's GEMM for
    #: ``[B, d] x [d, I]`` with d = 64 runs ~30% faster in row blocks of ~1k than as one
    #: ``B = 4096`` call, and the block's scores are still in cache for ``topk``.
    SCORE_BLOCK = 1024

    def _ranked(self, users: Tensor, mask_rows: Tensor, mask_items: Tensor) -> Tensor:
        """Top-``max(ks)`` item ids of every user (train items masked), ``[len(users), K]``."""
        assert self._emb is not None
        n, step = users.shape[0], self.SCORE_BLOCK
        kmax = min(max(self.ks), self.net.n_items)
        if n <= step:
            scores = self.net.score(self._emb[0], self._emb[1], users)
            scores[mask_rows, mask_items] = float("-inf")
            return torch.topk(scores, kmax, dim=1, sorted=True).indices
        if mask_rows.numel() > 1 and bool((mask_rows[1:] < mask_rows[:-1]).any()):
            order = torch.argsort(mask_rows, stable=True)
            mask_rows, mask_items = mask_rows[order], mask_items[order]
        starts = torch.arange(0, n + step, step, device=mask_rows.device).clamp_(max=n)
        cuts = torch.searchsorted(mask_rows, starts).tolist()
        parts = []
        for b, start in enumerate(range(0, n, step)):
            scores = self.net.score(self._emb[0], self._emb[1], users[start : start + step])
            lo, hi = cuts[b], cuts[b + 1]
            scores[mask_rows[lo:hi] - start, mask_items[lo:hi]] = float("-inf")
            parts.append(torch.topk(scores, kmax, dim=1, sorted=True).indices)
        return torch.cat(parts)

    def _eval_step(self, batch: dict) -> None:
        assert self._emb is not None
        topk = self._ranked(batch["users"], batch["mask_rows"], batch["mask_items"])
        rows, items = batch["truth_rows"], batch["truth_items"]
        self._accumulate(topk, rows, items, self.ks)
        if self.item_groups is not None and self._prefix == "test":
            for g in range(int(self.item_groups.max()) + 1):
                g_rows, g_items = group_truth(rows, items, self.item_groups, g)
                self._accumulate(topk, g_rows, g_items, self.group_ks, tag=f"popgroup{g}/")

    def _accumulate(
        self, topk: Tensor, rows: Tensor, items: Tensor, ks: Sequence[int], tag: str = ""
    ) -> None:
        sums, n_users = chunk_metric_sums(topk, rows, items, self.net.n_items, ks)
        if n_users == 0:
            return
        for key, val in sums.items():
            self._add(tag + key, val)
        self._add(tag + "#users", torch.tensor(n_users, device=topk.device))

    def _finish_eval(self, prefix: str) -> dict[str, float]:
        keys = sorted(self._sums)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Sums and counts, reduced once: exact under any sharding of users.
            packed = (
                torch.stack([self._sums[k] for k in keys]) if keys else torch.zeros(0, dtype=torch.float64)
            )
            packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
            self._sums = dict(zip(keys, packed))
        out: dict[str, float] = {}
        for key in keys:
            if key.endswith("#users"):
                continue
            tag = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            out[f"{prefix}/{key}"] = float(self._sums[key] / self._sums[tag + "#users"])
        self._emb = None
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
        self._start_eval()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._finish_eval("test"), sync_dist=False)

    # -- checkpoint state -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["egra_best"] = {"epoch": self.best_epoch, "score": self.best_score}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        best = checkpoint.get("egra_best", {})
        self.best_epoch = int(best.get("epoch", -1))
        self.best_score = float(best.get("score", float("-inf")))
