"""LGMRec (Guo et al., AAAI 2024, arXiv 2312.16400) as the MMRec toolbox runs it.

"LGMRec: Local and Global Graph Learning for Multimodal Recommendation". Users and items get
*local* embeddings from the user-item graph, kept apart for IDs and for each modality, plus
*global* embeddings from a hypergraph whose hyperedges are learned per modality.

Notation: ``R`` the binary user x item train matrix, ``Â = D^{-1/2} [[0, R], [Rᵀ, 0]] D^{-1/2}``
(LightGCN's graph), ``X_m`` the frozen item features of modality ``m``, ``τ`` = ``tau``.

* **Collaborative graph embedding** (IDs): ``E_c = mean_{l=0..L_ui} Â^l [E_U; E_I]``.
* **Modality graph embedding**: items ``F_m = X_m W_m`` (``W_m`` learned, no bias), users the
  mean of their train items' ``F_m`` (``D_u^{-1} R F_m``), propagated ``L_mm`` times:
  ``E_m = Â^{L_mm} [D_u^{-1} R F_m; F_m]`` (the last layer only, no layer mean).
  Local embeddings: ``E_local = E_c + Σ_m normalize(E_m)`` (rows L2-normalised).
* **Global hypergraph embedding**: ``H`` hyperedges per modality, ``V_m ∈ R^{d_m x H}`` learned.
  Item-hyperedge dependencies ``Λ^I_m = X_m V_m``, user-hyperedge ``Λ^U_m = R Λ^I_m``; each
  row is turned into a soft assignment by a Gumbel-softmax of temperature ``τ`` while
  training (``softmax((Λ + g)/τ)``, ``g`` i.i.d. Gumbel(0, 1)) and dropped out with keep rate
  ``keep_rate``. ``L_h`` hypergraph layers on the items' ``E_c`` part ``E^I_c``:
  ``Z = Λ^Iᵀ E_{l-1}``, ``E_l = Λ^I Z``, users ``Λ^U Z`` (of the last layer). Global
  embeddings ``E_g = Σ_m [Λ^U_m Z_m; E_{L_h, m}]``.
* **Output**: ``E = E_local + α · normalize(E_g)``; scores are inner products of its rows.
* **Loss**: ``BPR(E) + cl_weight · L_hcl + reg_weight · (‖e_u‖ + ‖e_i⁺‖ + ‖e_i⁻‖)/B`` (un-squared
  Frobenius norms of the batch's rows of ``E``). ``L_hcl`` aligns the hypergraph embeddings of
  two modalities ``a`` (anchor) and ``b``: for the batch's users
  ``-Σ_u log softmax_{u'}(cos(g^a_u, g^b_{u'})/τ)[u]`` over *all* users ``u'``, and the same for
  the positive items over all items (summed over the batch, not averaged).

Where this module chooses (the paper and toolbox leave it open, or would make evaluation
random): in ``eval()`` mode the assignments are the noise-free ``softmax(Λ/τ)`` and nothing is
dropped (the toolbox draws fresh Gumbel noise at evaluation too), so a checkpoint ranks
items the same way every time. With one modality there is no ``L_hcl`` (the toolbox falls
back to ``E_c`` alone then); with more than two, ``L_hcl`` sums every pair ``(a, b)``,
``a`` before ``b`` in ``modalities``. The ID and feature widths are one ``embedding_dim``
(the local sum needs them equal).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egra.graphs import SparseOp, interaction_matrix, normalized_bipartite
from egra.models.base import Recommender
from egra.models.lightgcn import propagate_mean
from egra.models.losses import bpr_loss, l2_norms
from egra.models.multimodal import as_float_tensor


def _xavier(rows: int, cols: int) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(rows, cols)))


class LGMRec(Recommender):
    """LGMRec: local (ID and modality) graph embeddings plus a learned global hypergraph.

    Features are frozen (non-persistent buffers ``feat_<m>``); the learned tables are the ID
    embeddings, the projections ``proj[m]`` (``W_m``) and the hyperedges ``hyper[m]`` (``V_m``).
    """

    VIEWS = ("fused", "id")

    def __init__(
        self,
        *,
        n_users: int,
        n_items: int,
        train_users: np.ndarray,
        train_items: np.ndarray,
        features: Mapping[str, np.ndarray | Tensor] | None = None,
        embedding_dim: int = 64,
        n_ui_layers: int = 2,
        n_mm_layers: int = 2,
        n_hyper_layers: int = 1,
        hyper_num: int = 4,
        keep_rate: float = 0.5,
        alpha: float = 0.3,
        cl_weight: float = 1e-4,
        reg_weight: float = 1e-6,
        tau: float = 0.2,
        modalities: Sequence[str] | None = None,
    ):
        super().__init__()
        if not features:
            raise ValueError("LGMRec needs at least one modality: `features` is empty or None")
        modalities = sorted(features) if modalities is None else list(modalities)
        if not modalities:
            raise ValueError("LGMRec needs at least one modality: `modalities` is empty")
        missing = [m for m in modalities if m not in features]
        if missing:
            raise ValueError(f"modalities {missing} not in features (have {sorted(features)})")
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
        if n_hyper_layers < 1:
            raise ValueError(f"n_hyper_layers must be >= 1, got {n_hyper_layers}")
        if hyper_num < 1:
            raise ValueError(f"hyper_num must be >= 1, got {hyper_num}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")

        self.n_users, self.n_items = int(n_users), int(n_items)
        self.embedding_dim = embedding_dim
        self.n_ui_layers, self.n_mm_layers, self.n_hyper_layers = n_ui_layers, n_mm_layers, n_hyper_layers
        self.hyper_num, self.keep_rate, self.alpha = hyper_num, keep_rate, alpha
        self.cl_weight, self.reg_weight, self.tau = cl_weight, reg_weight, tau
        self.modalities = tuple(modalities)

        d = embedding_dim
        self.user_emb = _xavier(self.n_users, d)
        self.item_emb = _xavier(self.n_items, d)

        r = interaction_matrix(train_users, train_items, self.n_users, self.n_items)
        self.ui = SparseOp(r)  # R (U x I, binary): users' sums over their items
        self.adj = SparseOp(normalized_bipartite(r))
        deg_u = np.asarray(r.sum(axis=1), dtype=np.float64).ravel()
        inv = np.divide(1.0, deg_u, out=np.zeros_like(deg_u), where=deg_u > 0)
        self.register_buffer(
            "inv_deg_u", torch.from_numpy(inv.astype(np.float32)).unsqueeze(1), persistent=False
        )

        self.proj = nn.ParameterDict()
        self.hyper = nn.ParameterDict()
        for m in self.modalities:
            x = as_float_tensor(features[m])
            if x.ndim != 2 or x.shape[0] != self.n_items:
                raise ValueError(f"features[{m!r}] has shape {tuple(x.shape)}, expected ({self.n_items}, d)")
            self.register_buffer(f"feat_{m}", x, persistent=False)
            self.proj[m] = _xavier(x.shape[1], d)
            self.hyper[m] = _xavier(x.shape[1], hyper_num)

    # ------------------------------------------------------------- parts
    def feature(self, m: str) -> Tensor:
        return getattr(self, f"feat_{m}")

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[: self.n_users], x[self.n_users :]

    def collaborative(self) -> Tensor:
        """``E_c = mean_{l=0..L_ui} Â^l [E_U; E_I]`` — ``[U + I, d]``."""
        return propagate_mean(self.adj, torch.cat([self.user_emb, self.item_emb]), self.n_ui_layers)

    def modality_embedding(self, m: str) -> Tensor:
        """``E_m = Â^{L_mm} [D_u^{-1} R F_m; F_m]`` with ``F_m = X_m W_m`` — ``[U + I, d]``."""
        f = self.feature(m) @ self.proj[m]
        z = torch.cat([self.ui(f) * self.inv_deg_u, f])
        for _ in range(self.n_mm_layers):
            z = self.adj(z)
        return z

    def hyperedge_logits(self, m: str) -> tuple[Tensor, Tensor]:
        """``(Λ^I_m = X_m V_m [I, H], Λ^U_m = R Λ^I_m [U, H])``."""
        li = self.feature(m) @ self.hyper[m]
        return li, self.ui(li)

    def assignments(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Soft hyperedge assignments ``(items [I, H], users [U, H])`` per modality.

        Training: Gumbel-softmax (noise from torch's generator), then dropout with keep rate
        ``keep_rate`` (drawn after all the noise); ``eval()``: ``softmax(Λ/τ)``, no dropout.
        """
        out = {}
        for m in self.modalities:
            li, lu = self.hyperedge_logits(m)
            if self.training:
                out[m] = (F.gumbel_softmax(li, self.tau, dim=1), F.gumbel_softmax(lu, self.tau, dim=1))
            else:
                out[m] = (torch.softmax(li / self.tau, dim=1), torch.softmax(lu / self.tau, dim=1))
        if self.training and self.keep_rate < 1.0:
            p = 1.0 - self.keep_rate
            out = {m: (F.dropout(hi, p), F.dropout(hu, p)) for m, (hi, hu) in out.items()}
        return out

    def hypergraph(self, h_items: Tensor, h_users: Tensor, e_items: Tensor) -> tuple[Tensor, Tensor]:
        """``n_hyper_layers`` of ``Z = Λ^Iᵀ E``, ``E ← Λ^I Z``; users ``Λ^U Z`` of the last layer."""
        e = e_items
        for _ in range(self.n_hyper_layers):
            z = h_items.T @ e
            e = h_items @ z
        return h_users @ z, e

    def propagate(
        self, assign: Mapping[str, tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """``(E_c, E, {m: (global users, global items)})`` — all ``[U + I, d]`` but the last.

        ``assign``: the hyperedge assignments to use (default: :meth:`assignments`).
        """
        assign = self.assignments() if assign is None else assign
        e_c = self.collaborative()
        local = e_c
        glob = torch.zeros_like(e_c)
        hyper = {}
        items_c = e_c[self.n_users :]
        for m in self.modalities:
            local = local + F.normalize(self.modality_embedding(m), dim=1)
            gu, gi = self.hypergraph(*assign[m], items_c)
            hyper[m] = (gu, gi)
            glob = glob + torch.cat([gu, gi])
        return e_c, local + self.alpha * F.normalize(glob, dim=1), hyper

    # ------------------------------------------------------------- contract
    def embeddings(self) -> tuple[Tensor, Tensor]:
        """``E``'s user and item rows (``eval()``: deterministic; training: one noise draw)."""
        return self.split(self.propagate()[1])

    def hcl(self, anchor: Tensor, positive: Tensor, ids: Tensor) -> Tensor:
        """``Σ_{r ∈ ids} −log softmax_j(cos(a_r, p_j)/τ)[r]`` over all rows ``j`` of ``positive``:
        row ``r`` of the ``anchor`` table against every row of the ``positive`` table, its own
        the positive. Computed once per distinct id, weighted by its count (the same sum)."""
        uniq, counts = torch.unique(ids, return_counts=True)
        p = F.normalize(positive, dim=1)
        a = F.normalize(anchor[uniq], dim=1)
        pos = (a * p[uniq]).sum(1) / self.tau
        lse = torch.logsumexp(a @ p.T / self.tau, dim=1)
        return (counts.to(lse.dtype) * (lse - pos)).sum()

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """``BPR + cl_weight · L_hcl + reg_weight · L_reg`` on one forward pass."""
        _, e, hyper = self.propagate()
        u_all, i_all = self.split(e)
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        bpr = bpr_loss(u, p, n)
        hcl = e.new_zeros(())
        for a, b in itertools.combinations(self.modalities, 2):
            (ua, ia), (ub, ib) = hyper[a], hyper[b]
            hcl = hcl + self.hcl(ua, ub, users) + self.hcl(ia, ib, pos)
        reg = l2_norms(u, p, n, denom=users.shape[0])
        loss = bpr + self.cl_weight * hcl + self.reg_weight * reg
        return {
            "loss": loss,
            "bpr": bpr.detach(),
            "hcl": (self.cl_weight * hcl).detach(),
            "reg": (self.reg_weight * reg).detach(),
        }

    @torch.no_grad()
    def representations(self, view: str = "fused") -> tuple[Tensor, Tensor]:
        """Detached ``(users, items)`` in ``eval()`` mode: ``"fused"`` the scored ``E``,
        ``"id"`` the collaborative part ``E_c``."""
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {self.VIEWS}, got {view!r}")
        was_training = self.training
        self.eval()
        try:
            e_c, e, _ = self.propagate()
        finally:
            self.train(was_training)
        u, i = self.split(e if view == "fused" else e_c)
        return u.detach(), i.detach()
