"""BPR-MF and LightGCN (He et al., SIGIR 2020) as in MMRec."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from egra.graphs import SparseOp, interaction_matrix, normalized_bipartite
from egra.models.base import Recommender
from egra.models.losses import bpr_loss, l2_norms


def propagate_mean(op: SparseOp, x0: Tensor, n_layers: int, rows: Tensor | None = None) -> Tensor:
    """``mean(x0, Âx0, …, Â^L x0)`` — LightGCN's layer combination (layer 0 included).

    With ``rows`` only those rows of the result (``[len(rows), d]``, the same numbers):
    the last layer is then computed for those rows alone (``Â[rows] Â^{L-1} x0``), which
    is what a training step needs.
    """
    if rows is None:
        out = x0
        x = x0
        for _ in range(n_layers):
            x = op(x)
            out = out + x
        return out / (n_layers + 1)
    if n_layers == 0:
        return x0[rows]
    # Layers 0..L-1 summed in full (same order of additions as above), gathered once.
    out = x0
    x = x0
    for _ in range(n_layers - 1):
        x = op(x)
        out = out + x
    return (out[rows] + op.rows(x, rows)) / (n_layers + 1)


class BPRMF(Recommender):
    """Matrix factorisation trained with BPR (Rendle et al., 2009): ``ŷ_ui = e_uᵀ e_i``.

    Regulariser as in MMRec's LightGCN/BPR: ``reg_weight · Σ‖ego rows‖_F / B``.
    """

    def __init__(
        self,
        *,
        n_users: int,
        n_items: int,
        train_users: np.ndarray | None = None,
        train_items: np.ndarray | None = None,
        features: dict | None = None,
        embedding_dim: int = 64,
        reg_weight: float = 1e-4,
    ):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.reg_weight = reg_weight
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, embedding_dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, embedding_dim)))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb, self.item_emb

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        u, i = self.embeddings()
        bpr = bpr_loss(u[users], i[pos], i[neg])
        reg = self.reg_weight * l2_norms(
            self.user_emb[users], self.item_emb[pos], self.item_emb[neg], denom=users.shape[0]
        )
        return {"loss": bpr + reg, "bpr": bpr.detach(), "reg": reg.detach()}


class LightGCN(BPRMF):
    """LightGCN: ``E* = mean_{l=0..L} Â^l E⁰`` on ``Â = D^{-1/2} [[0,R],[Rᵀ,0]] D^{-1/2}``.

    The regulariser acts on the layer-0 (ego) rows with un-squared norms, as MMRec does.
    """

    def __init__(
        self,
        *,
        n_users: int,
        n_items: int,
        train_users: np.ndarray,
        train_items: np.ndarray,
        features: dict | None = None,
        embedding_dim: int = 64,
        n_layers: int = 2,
        reg_weight: float = 1e-4,
    ):
        super().__init__(n_users=n_users, n_items=n_items, embedding_dim=embedding_dim, reg_weight=reg_weight)
        self.n_layers = n_layers
        r = interaction_matrix(train_users, train_items, n_users, n_items)
        self.adj = SparseOp(normalized_bipartite(r))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        x0 = torch.cat([self.user_emb, self.item_emb], dim=0)
        out = propagate_mean(self.adj, x0, self.n_layers)
        return out[: self.n_users], out[self.n_users :]

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """BPRMF's loss on ``E*``, propagated for the batch's distinct users and items only."""
        b = users.shape[0]
        uu, u_inv = torch.unique(users, return_inverse=True)
        ii, i_inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        x0 = torch.cat([self.user_emb, self.item_emb], dim=0)
        out = propagate_mean(self.adj, x0, self.n_layers, torch.cat([uu, ii + self.n_users]))
        z_u, z_i = out[: uu.shape[0]], out[uu.shape[0] :]
        bpr = bpr_loss(z_u[u_inv], z_i[i_inv[:b]], z_i[i_inv[b:]])
        reg = self.reg_weight * l2_norms(
            self.user_emb[users], self.item_emb[pos], self.item_emb[neg], denom=users.shape[0]
        )
        return {"loss": bpr + reg, "bpr": bpr.detach(), "reg": reg.detach()}
