"""DA-MRS (Xu et al., KDD 2024, arXiv 2406.12501) on LightGCN, as its authors and MMRec run it.

"Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal Content and
User Feedback". The backbone is LightGCN; DA-MRS adds denoised item-item graphs, a denoised
BPR loss and two alignment losses. Notation: ``E_U, E_I`` the ID embeddings, ``σ`` the
logistic function, ``τ`` = ``tau``, ``cos`` the cosine of two rows.

* **Item-item graphs** (fixed, built by the graph stage): per modality ``m`` the kNN graph of
  the features restricted to pairs that *every* modality finds similar (cosine at least its
  mean over all pairs; ``egra.graphs.consistency``), binary, ``D^{-1/2} A D^{-1/2}``; and the
  behaviour graph ``S_b`` of co-interactions (``egra.graphs.cooccurrence``: each item's
  top-``k`` items by number of common users, at least 2), which the model turns into
  ``norm(B + I)`` — ``B`` its edges (binary, as the authors' model uses it; counts with
  ``behavior_weighted``), ``I`` a self-loop per item, ``norm`` = ``D^{-1/2} · D^{-1/2}`` with row sums.
* **Representations**: LightGCN ``(u_g, i_g) = mean_{l=0..L_ui} Â^l [E_U; E_I]``; one item view
  per graph ``h_v = S_v^{L_mm} E_I`` (``v`` ranges over the modalities and the behaviour graph,
  ``V`` views); content ``c = (1/V) Σ_v h_v``. Users ``u_g``, items ``i_g + c``; scores are inner
  products.
* **Denoised BPR** (user feedback): for a triple ``(u, i⁺, i⁻)`` and each view ``v``,
  ``p_v = σ(u_g · normalize(h_v[i⁺]))`` and ``n_v = σ(u_g · normalize(h_v[i⁻]))``. With ``p̄``,
  ``Var(p)`` (unbiased) and ``max p`` over the views, and ``n̄`` the mean of every ``n_v`` of the
  batch (one number), the weights (no gradient) are
  ``w⁺ = clip(p̄ · exp(−Var p)², 0, 1)`` and ``w⁻ = clip((max p − n̄) · [p̄ < n̄], 0, 1)``;
  ``L_bpr = −mean(w⁺ log σ(s⁺ − s⁻) + w⁻ log σ(s⁻ − s⁺))`` with ``s`` the scores. A positive the
  content does not support counts less, and one the content finds less likely than a
  negative is partly learned in reverse.
* **Alignment guided by item relations** ``L_AI``: for each of the batch's distinct items ``i``
  and each view ``v``, ``P_v(i) = softmax_j cos(h_v[i], h_v[j])`` over all items. Pseudo-labels of
  view ``v``: ``M`` = the top ``n`` of ``Σ_w P_w + P_v`` (what all views agree on, ``v`` counted
  twice) and ``S`` = the top ``n`` of ``P_v`` outside ``M``; with ``e_j = exp(cos(h_v[i], h_v[j])/τ)``
  and ``T = Σ_j e_j``: ``−log(Σ_M e/T + ε) − log(Σ_S e/(T − Σ_M e) + ε)``, ``ε = 1e-9``; mean over
  items, then over views. (``n`` = ``n_pseudo_pos``.)
* **Alignment guided by user preference** ``L_AU``: for the batch's distinct users and items,
  ``p = σ(u_g · normalize(i_g))`` and ``q = σ(u_g · normalize(c))``; the mean over all pairs of
  ``KL(p‖q) + KL(q‖p)`` of the Bernoulli laws, computed as ``(p − q)(logit p − logit q)``.
* **Loss**: ``L_bpr + neighbor_weight · L_AI + kl_weight · L_AU``. The authors' code has no L2 term.

The features enter only through the graphs (the toolbox's unused projection layers are left
out). ``n̄`` as one batch-wide number is the authors' code; the paper's notation would also
read per triple.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egra.graphs import SparseOp, interaction_matrix, normalized_bipartite, sym_normalize
from egra.models.base import Recommender
from egra.models.lightgcn import propagate_mean

#: The view of the co-interaction graph (the other views are named by their modality).
BEHAVIOR = "behavior"
#: ``ε`` of the neighbour-discrimination logs (the authors' ``10e-10``).
EPS = 1e-9


def behavior_adjacency(graph: sp.spmatrix, weighted: bool = False) -> sp.csr_matrix:
    """``norm(B + I)``: the co-interaction graph's edges (binary unless ``weighted``) plus a
    self-loop of weight 1 per item, ``D^{-1/2} · D^{-1/2}`` with row sums."""
    b = sp.csr_matrix(graph, dtype=np.float32, copy=True)
    b.setdiag(0)
    b.eliminate_zeros()
    if not weighted:
        b.data[:] = 1.0
    a = (b + sp.identity(b.shape[0], dtype=np.float32, format="csr")).tocsr()
    return sym_normalize(a)


class DAMRS(Recommender):
    """DA-MRS on a LightGCN backbone.

    ``modality_graphs`` (``S_m``, normalised) and ``behavior_graph`` (the raw top-k
    co-interaction counts) come from the graph stage (``graph.knn_convention=damrs``,
    ``graph.cooc_k``). ``features`` only names the modalities (default: their sorted keys).
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
        modality_graphs: Mapping[str, sp.spmatrix] | None = None,
        behavior_graph: sp.spmatrix | None = None,
        embedding_dim: int = 64,
        n_ui_layers: int = 2,
        n_mm_layers: int = 1,
        kl_weight: float = 1.0,
        neighbor_weight: float = 1e-3,
        tau: float = 0.2,
        n_pseudo_pos: int = 10,
        behavior_weighted: bool = False,
        modalities: Sequence[str] | None = None,
    ):
        super().__init__()
        graphs = dict(modality_graphs or {})
        if modalities is None:
            modalities = sorted(features) if features else sorted(graphs)
        modalities = list(modalities)
        if not modalities:
            raise ValueError("DA-MRS needs at least one modality: no features, modalities or modality graphs")
        if BEHAVIOR in modalities:
            raise ValueError(f"a modality may not be called {BEHAVIOR!r} (the co-interaction view's name)")
        if features:
            absent = [m for m in modalities if m not in features]
            if absent:
                raise ValueError(f"modalities {absent} not in features (have {sorted(features)})")
        no_graph = [m for m in modalities if m not in graphs]
        if no_graph:
            raise ValueError(
                f"no item graph for modalities {no_graph} in `modality_graphs`: build them with "
                "egra.graphs.consistent_knn_graphs(features, k)"
            )
        if behavior_graph is None:
            raise ValueError(
                "DA-MRS needs `behavior_graph`: build it with egra.graphs.cooccurrence_graph(users, items, n_items, k)"
            )
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if n_pseudo_pos < 1:
            raise ValueError(f"n_pseudo_pos must be >= 1, got {n_pseudo_pos}")

        self.n_users, self.n_items = int(n_users), int(n_items)
        self.embedding_dim = embedding_dim
        self.n_ui_layers, self.n_mm_layers = n_ui_layers, n_mm_layers
        self.kl_weight, self.neighbor_weight, self.tau = kl_weight, neighbor_weight, tau
        self.n_pseudo_pos, self.behavior_weighted = n_pseudo_pos, behavior_weighted
        self.modalities = tuple(modalities)

        d = embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))

        r = interaction_matrix(train_users, train_items, self.n_users, self.n_items)
        self.adj = SparseOp(normalized_bipartite(r))
        shape = (self.n_items, self.n_items)
        self.item_graphs = nn.ModuleDict()
        for m in self.modalities:
            g = sp.csr_matrix(graphs[m], dtype=np.float32)
            if g.shape != shape:
                raise ValueError(f"modality_graphs[{m!r}] has shape {g.shape}, expected {shape}")
            self.item_graphs[m] = SparseOp(g)
        b = sp.csr_matrix(behavior_graph)
        if b.shape != shape:
            raise ValueError(f"behavior_graph has shape {b.shape}, expected {shape}")
        self.item_graphs[BEHAVIOR] = SparseOp(behavior_adjacency(b, behavior_weighted))

    # ------------------------------------------------------------- forward
    @property
    def views(self) -> tuple[str, ...]:
        return (*self.modalities, BEHAVIOR)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[: self.n_users], x[self.n_users :]

    def behavior_view(self) -> tuple[Tensor, Tensor]:
        """LightGCN's ``(u_g, i_g)``."""
        x0 = torch.cat([self.user_emb, self.item_emb])
        return self.split(propagate_mean(self.adj, x0, self.n_ui_layers))

    def item_views(self) -> dict[str, Tensor]:
        """``h_v = S_v^{n_mm_layers} E_I`` for every view (modalities, then the behaviour graph)."""
        out = {}
        for v in self.views:
            h = self.item_emb
            for _ in range(self.n_mm_layers):
                h = self.item_graphs[v](h)
            out[v] = h
        return out

    @staticmethod
    def content(h: Mapping[str, Tensor]) -> Tensor:
        """``c = (1/V) Σ_v h_v``."""
        return torch.stack(list(h.values())).mean(0)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """``(u_g, i_g + c)``."""
        u, i = self.behavior_view()
        return u, i + self.content(self.item_views())

    # ------------------------------------------------------------- losses
    @torch.no_grad()
    def feedback_weights(
        self, u: Tensor, pos: Tensor, neg: Tensor, h: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``(w⁺, w⁻)`` of the denoised BPR for users' rows ``u`` (``u_g[users]``)."""
        p = torch.stack([torch.sigmoid((u * F.normalize(h[v][pos], dim=1)).sum(1)) for v in self.views])
        n = torch.stack([torch.sigmoid((u * F.normalize(h[v][neg], dim=1)).sum(1)) for v in self.views])
        p_mean, p_var, p_max = p.mean(0), p.var(0), p.max(0).values
        n_mean = n.mean()
        w_pos = (p_mean * torch.exp(-p_var) ** 2).clamp(0.0, 1.0)
        w_neg = ((p_max - n_mean) * (p_mean < n_mean).to(p.dtype)).clamp(0.0, 1.0)
        return w_pos, w_neg

    def item_cosines(self, h: Mapping[str, Tensor], items: Tensor) -> dict[str, Tensor]:
        """Per view ``v``: ``cos(h_v[i], h_v[j])`` for ``items`` x all items (``[len(items), I]``)."""
        return {v: F.normalize(h[v][items], dim=1) @ F.normalize(h[v], dim=1).T for v in self.views}

    @torch.no_grad()
    def pseudo_positives(self, cos: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per view ``v``: ``(M, S)`` item ids ``[rows, n]`` of ``L_AI`` from :meth:`item_cosines`
        (see the module docstring)."""
        n = min(self.n_pseudo_pos, self.n_items)
        probs = {v: torch.softmax(c.detach(), dim=1) for v, c in cos.items()}
        total = torch.stack(list(probs.values())).sum(0)
        out = {}
        for v, p in probs.items():
            multi = (total + p).topk(n, dim=1).indices
            single = p.scatter(1, multi, 0.0).topk(n, dim=1).indices
            out[v] = (multi, single)
        return out

    def item_alignment(self, h: Mapping[str, Tensor], items: Tensor) -> Tensor:
        """``L_AI`` for the distinct ``items`` of a batch (one cosine matrix per view serves the
        pseudo-labels and the loss)."""
        cos = self.item_cosines(h, items)
        labels = self.pseudo_positives(cos)
        terms = []
        for v in self.views:
            multi, single = labels[v]
            e = torch.exp(cos[v] / self.tau)
            total = e.sum(1)
            m_sum = e.gather(1, multi).sum(1)
            s_sum = e.gather(1, single).sum(1)
            terms.append((-torch.log(m_sum / total + EPS) - torch.log(s_sum / (total - m_sum) + EPS)).mean())
        return torch.stack(terms).mean()

    @staticmethod
    def preference_alignment(u: Tensor, items_id: Tensor, items_content: Tensor) -> Tensor:
        """``L_AU``: mean symmetric Bernoulli KL of ``σ(u·normalize(i_g))`` and ``σ(u·normalize(c))``."""
        x = u @ F.normalize(items_id, dim=1).T
        y = u @ F.normalize(items_content, dim=1).T
        return ((torch.sigmoid(x) - torch.sigmoid(y)) * (x - y)).mean()

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """``L_bpr + neighbor_weight · L_AI + kl_weight · L_AU``."""
        u_g, i_g = self.behavior_view()
        h = self.item_views()
        c = self.content(h)
        items = i_g + c
        u = u_g[users]
        w_pos, w_neg = self.feedback_weights(u, pos, neg, h)
        diff = (u * items[pos]).sum(1) - (u * items[neg]).sum(1)
        bpr = -(w_pos * F.logsigmoid(diff) + w_neg * F.logsigmoid(-diff)).mean()
        uu = torch.unique(users)
        ii = torch.unique(torch.cat([pos, neg]))
        ai = self.item_alignment(h, ii)
        au = self.preference_alignment(u_g[uu], i_g[ii], c[ii])
        loss = bpr + self.neighbor_weight * ai + self.kl_weight * au
        return {
            "loss": loss,
            "bpr": bpr.detach(),
            "ai": (self.neighbor_weight * ai).detach(),
            "au": (self.kl_weight * au).detach(),
            # mean feedback weights: how much of the batch the denoising keeps / reverses
            "denoise/w_pos": w_pos.mean(),
            "denoise/w_neg": w_neg.mean(),
        }

    @torch.no_grad()
    def representations(self, view: str = "fused") -> tuple[Tensor, Tensor]:
        """Detached ``(users, items)``: ``"fused"`` the scored ``(u_g, i_g + c)``, ``"id"`` ``(u_g, i_g)``."""
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {self.VIEWS}, got {view!r}")
        u, i = self.behavior_view()
        if view == "fused":
            i = i + self.content(self.item_views())
        return u.detach(), i.detach()
