"""The contract every recommender model follows (plain ``nn.Module``, no Lightning)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egra.models.losses import bpr_loss


class Constant(nn.Module):
    """A fixed tensor (e.g. a frozen feature table) that moves and casts with its model but is
    neither a parameter nor a buffer: outside ``state_dict`` (it is rebuilt from the data) and
    outside DDP's per-step buffer broadcast from rank 0, which every rank would otherwise pay
    for a table that is the same on every rank by construction. ``value`` is the tensor."""

    def __init__(self, value: Tensor):
        super().__init__()
        self.value = value

    def _apply(self, fn, recurse=True):
        self.value = fn(self.value)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.value.shape)}, dtype={self.value.dtype}"


class Recommender(nn.Module):
    """Base class: a model exposes final user/item representations and a batch loss.

    Constructors take the dataset as keyword arguments ``n_users``, ``n_items``,
    ``train_users``, ``train_items`` (int arrays of the train split) and ``features``
    (modality name -> ``[n_items, d_m]`` float array), followed by the model's
    hyperparameters. A model that needs no features ignores them.
    """

    #: keys of ``loss()``'s dict besides ``"loss"`` are logged as ``train/loss_<key>``.
    n_users: int
    n_items: int

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final ``(user [U, d], item [I, d])`` representations that scores are made from."""
        raise NotImplementedError

    def score(self, user_emb: Tensor, item_emb: Tensor, users: Tensor, out: Tensor | None = None) -> Tensor:
        """Scores of the given users against every item, ``[len(users), I]``.

        ``out`` (a ``[len(users), I]`` buffer) is written instead of a new tensor: evaluation
        reuses one, since a fresh buffer of a few dozen MB per block costs page faults.
        """
        u = user_emb[users]
        if out is None:
            return u @ item_emb.T
        return torch.mm(u, item_emb.T, out=out)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """Default: BPR on the final representations. Subclasses add their terms."""
        u, i = self.embeddings()
        bpr = bpr_loss(u[users], i[pos], i[neg])
        return {"loss": bpr, "bpr": bpr.detach()}

    @torch.no_grad()
    def export(self) -> tuple[Tensor, Tensor]:
        """Detached final representations (what a pretraining stage saves)."""
        was_training = self.training
        self.eval()
        try:
            u, i = self.embeddings()
        finally:
            self.train(was_training)
        return u.detach(), i.detach()
