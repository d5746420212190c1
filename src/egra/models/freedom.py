"""FREEDOM (Zhou & Shen, ACM MM 2023, arXiv 2211.06924) as MMRec runs it.

"A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
Recommendation", written from the paper and MMRec's ``FREEDOM`` (see docs/method.md):

* a **frozen item-item graph** ``S = w_v·S_v + (1 − w_v)·S_t`` (``w_v = mm_image_weight``),
  each ``S_m`` the binary top-``k`` cosine graph of the raw features (self included,
  directed) normalised ``D^{-1/2} A D^{-1/2}`` with row sums, so every edge weighs ``1/k``
  (FREEDOM's convention, ``egra.graphs.knn.FREEDOM_MODALITY_GRAPH``; built by the graph stage
  with ``knn_convention: freedom``). With one modality ``S`` is that modality's graph;
* a **denoised user-item graph**, resampled at every epoch start: ``⌊(1 − dropout)·|E|⌋``
  train edges drawn without replacement with probability ``∝ 1/sqrt(d_u d_i)``, the kept
  bipartite graph normalised again. Evaluation (``eval()`` mode) uses the full graph;
* **forward**: ``h = S^{n_mm_layers} E_I``; LightGCN on the (masked) user-item graph from
  ``[E_U; E_I]``, mean of layers ``0..n_ui_layers`` → ``(u_g, i_g)``; users ``u_g``, items
  ``i_g + h``, scores by inner product;
* **loss**: ``BPR(u_g, i⁺, i⁻) + reg_weight · Σ_m BPR(u_g, F_m[i⁺], F_m[i⁻])`` with
  ``F_m = X_m W_mᵀ + b_m`` the projected (trainable) raw features: the "reg" term is one
  modality BPR per modality, not an L2 norm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from egra.graphs import SparseOp, interaction_matrix, normalized_bipartite
from egra.models.base import Recommender
from egra.models.lightgcn import propagate_mean
from egra.models.losses import bpr_loss
from egra.models.mgcn import _as_float_tensor

#: The modality ``mm_image_weight`` weighs when there are two.
IMAGE = "image"


def mix_item_graphs(
    graphs: Mapping[str, sp.spmatrix], image_weight: float, image: str = IMAGE
) -> sp.csr_matrix:
    """FREEDOM's item graph ``S = w·S_image + (1 − w)·S_other`` (float32 CSR).

    One graph: that graph (no weight applies). Two: one of them must be ``image``.
    """
    names = list(graphs)
    if len(names) == 1:
        s = sp.csr_matrix(graphs[names[0]], dtype=np.float32)
    elif len(names) == 2 and image in names:
        other = next(n for n in names if n != image)
        w = np.float32(image_weight)
        s = w * sp.csr_matrix(graphs[image], dtype=np.float32) + (np.float32(1.0) - w) * sp.csr_matrix(
            graphs[other], dtype=np.float32
        )
        s = sp.csr_matrix(s, dtype=np.float32)
    else:
        raise ValueError(
            f"FREEDOM mixes one modality graph, or two of which one is {image!r}; got {sorted(names)}"
        )
    s.eliminate_zeros()
    s.sort_indices()
    return s


def sample_edges(weights: np.ndarray, n_keep: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n_keep`` edges drawn without replacement with probability ``∝ weights``.

    Successive sampling (each draw picks among the edges not drawn yet with probability
    proportional to their weight; the law of ``torch.multinomial(w, n, replacement=False)``,
    which MMRec uses, and of ``numpy.random.Generator.choice(p=…, replace=False)``), done as
    an exponential race: the ``n_keep`` smallest ``E_e / w_e`` with ``E_e ~ Exp(1)`` i.i.d.
    (Efraimidis & Spirakis, 2006). One vectorised pass, ``O(|E|)``. Zero-weight edges are
    drawn only when nothing else is left.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    n_keep = int(n_keep)
    if n_keep >= n:
        return np.arange(n, dtype=np.int64)
    if n_keep <= 0:
        return np.empty(0, dtype=np.int64)
    e = rng.standard_exponential(n)
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, e / np.where(w > 0, w, 1.0), np.inf)
    return np.sort(np.argpartition(keys, n_keep - 1)[:n_keep]).astype(np.int64)


class FREEDOM(Recommender):
    """FREEDOM: frozen item-item graph + degree-sensitive denoised user-item graph.

    ``modality_graphs`` are the per-modality item graphs ``S_m`` in FREEDOM's convention
    (the graph stage builds them with ``model.knn_convention=freedom``); the model mixes them
    with ``mm_image_weight``. ``train_features`` (MMRec: true) makes the raw feature tables
    parameters ``feat_<m>``, else non-persistent buffers.

    The training graph: the full normalised graph until :meth:`on_train_epoch_start` (called by
    the LightningModule at every epoch start with a generator seeded by ``(seed, epoch)``)
    draws the epoch's denoised graph; :meth:`set_train_edges` sets a given one. ``eval()`` mode
    always uses the full graph.
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
        embedding_dim: int = 64,
        n_ui_layers: int = 2,
        n_mm_layers: int = 1,
        mm_image_weight: float = 0.1,
        dropout: float = 0.8,
        reg_weight: float = 1e-4,
        train_features: bool = True,
        modalities: Sequence[str] | None = None,
    ):
        super().__init__()
        if not features:
            raise ValueError("FREEDOM needs at least one modality: `features` is empty or None")
        modalities = sorted(features) if modalities is None else list(modalities)
        if not modalities:
            raise ValueError("FREEDOM needs at least one modality: `modalities` is empty")
        missing = [m for m in modalities if m not in features]
        if missing:
            raise ValueError(f"modalities {missing} not in features (have {sorted(features)})")
        no_graph = [m for m in modalities if m not in (modality_graphs or {})]
        if no_graph:
            raise ValueError(
                f"no kNN graph S_m for modalities {no_graph} in `modality_graphs`: build them with "
                "egra.graphs.modality_graphs(features, k, preset='freedom')"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= mm_image_weight <= 1.0:
            raise ValueError(f"mm_image_weight must be in [0, 1], got {mm_image_weight}")

        self.n_users, self.n_items = int(n_users), int(n_items)
        self.embedding_dim = embedding_dim
        self.n_ui_layers, self.n_mm_layers = n_ui_layers, n_mm_layers
        self.mm_image_weight, self.dropout, self.reg_weight = mm_image_weight, dropout, reg_weight
        self.train_features = train_features
        self.modalities = tuple(modalities)

        d = embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))

        # User-item graph: the train edges (CSR order), their sampling weights 1/sqrt(d_u d_i)
        # (the full normalised graph's values) and the full normalised graph.
        r = interaction_matrix(train_users, train_items, self.n_users, self.n_items)
        self.edge_users, self.edge_items = (a.astype(np.int64) for a in r.nonzero())
        deg_u = np.asarray(r.sum(axis=1), dtype=np.float64).ravel()
        deg_i = np.asarray(r.sum(axis=0), dtype=np.float64).ravel()
        self.edge_weights = 1.0 / np.sqrt(deg_u[self.edge_users] * deg_i[self.edge_items])
        self.full_adj = SparseOp(normalized_bipartite(r))
        self.train_adj = self.full_adj
        self.kept_edges: np.ndarray | None = None  # None: the training graph is the full one

        graphs = {}
        self.proj = nn.ModuleDict()
        for m in self.modalities:
            x = _as_float_tensor(features[m])
            if x.ndim != 2 or x.shape[0] != self.n_items:
                raise ValueError(f"features[{m!r}] has shape {tuple(x.shape)}, expected ({self.n_items}, d)")
            g = sp.csr_matrix(modality_graphs[m], dtype=np.float32)
            if g.shape != (self.n_items, self.n_items):
                raise ValueError(
                    f"modality_graphs[{m!r}] has shape {g.shape}, expected ({self.n_items},) * 2"
                )
            graphs[m] = g
            if train_features:
                self.register_parameter(f"feat_{m}", nn.Parameter(x))
            else:
                self.register_buffer(f"feat_{m}", x, persistent=False)
            self.proj[m] = nn.Linear(x.shape[1], d)
        self.item_graph = SparseOp(mix_item_graphs(graphs, mm_image_weight))

    # ------------------------------------------------------------- the graphs
    @property
    def n_keep(self) -> int:
        """Edges kept per epoch: ``⌊(1 − dropout)·|E|⌋`` (MMRec's ``int()``, robust to the
        float error of ``1 − dropout``)."""
        return int(np.floor(len(self.edge_weights) * (1.0 - self.dropout) + 1e-6))

    def masked_adjacency(self, keep: np.ndarray) -> sp.csr_matrix:
        """``D^{-1/2} A D^{-1/2}`` of the bipartite graph of the train edges ``keep`` (indices
        into :attr:`edge_users` / :attr:`edge_items`), degrees counted on the kept edges."""
        keep = np.asarray(keep, dtype=np.int64)
        r = interaction_matrix(self.edge_users[keep], self.edge_items[keep], self.n_users, self.n_items)
        return normalized_bipartite(r)

    def set_train_edges(self, keep: np.ndarray | None) -> None:
        """Train on the graph of the edges ``keep`` from now on; None: the full graph."""
        self.kept_edges = None if keep is None else np.asarray(keep, dtype=np.int64)
        if keep is None:
            self.train_adj = self.full_adj
        else:
            self.train_adj = SparseOp(self.masked_adjacency(self.kept_edges)).to(self.user_emb.device)

    def sample_train_edges(self, rng: np.random.Generator) -> np.ndarray:
        """One epoch's kept edges: :func:`sample_edges` with weights ``1/sqrt(d_u d_i)``."""
        return sample_edges(self.edge_weights, self.n_keep, rng)

    def on_train_epoch_start(self, epoch: int, rng: np.random.Generator) -> None:
        """Draw this epoch's denoised user-item graph (nothing to do at ``dropout = 0``)."""
        if self.dropout > 0:
            self.set_train_edges(self.sample_train_edges(rng))

    def adjacency(self) -> SparseOp:
        """The user-item graph of the current mode: the epoch's denoised one while training,
        the full one in ``eval()`` mode."""
        return self.train_adj if self.training else self.full_adj

    # ------------------------------------------------------------- forward
    def feature(self, m: str) -> Tensor:
        """Raw feature table ``X_m`` (``[I, d_m]``; a parameter when trainable)."""
        return getattr(self, f"feat_{m}")

    def projected(self, m: str, items: Tensor | None = None) -> Tensor:
        """``F_m = X_m W_mᵀ + b_m`` — ``[I, d]``, or its rows ``items`` (projected alone)."""
        x = self.feature(m)
        return self.proj[m](x if items is None else x[items])

    def item_graph_view(self, items: Tensor | None = None) -> Tensor:
        """``h = S^{n_mm_layers} E_I`` — ``[I, d]``, or its rows ``items`` (last layer for them only)."""
        h = self.item_emb
        if items is None:
            for _ in range(self.n_mm_layers):
                h = self.item_graph(h)
            return h
        if self.n_mm_layers == 0:
            return h[items]
        for _ in range(self.n_mm_layers - 1):
            h = self.item_graph(h)
        return self.item_graph.rows(h, items)

    def behavior_view(self, rows: Tensor | None = None) -> Tensor:
        """LightGCN's mean of layers ``0..n_ui_layers`` on :meth:`adjacency` — ``[U + I, d]``
        (users first), or its ``rows`` (node ids)."""
        x0 = torch.cat([self.user_emb, self.item_emb], dim=0)
        return propagate_mean(self.adjacency(), x0, self.n_ui_layers, rows)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[: self.n_users], x[self.n_users :]

    # ------------------------------------------------------------- contract
    def embeddings(self) -> tuple[Tensor, Tensor]:
        """``(u_g, i_g + h)``: on the full user-item graph in ``eval()`` mode, on the epoch's
        denoised graph in training mode."""
        u, i = self.split(self.behavior_view())
        return u, i + self.item_graph_view()

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """BPR on ``(u_g, i_g + h)`` + ``reg_weight · Σ_m BPR(u_g, F_m[i⁺], F_m[i⁻])``.

        Propagated and projected for the batch's distinct users and items only (the same
        numbers as the full tables' rows).
        """
        b = users.shape[0]
        uu, u_inv = torch.unique(users, return_inverse=True)
        ii, i_inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        nu = uu.shape[0]
        z = self.behavior_view(torch.cat([uu, ii + self.n_users]))
        u_g = z[:nu][u_inv]
        z_i = z[nu:] + self.item_graph_view(ii)
        p, n = i_inv[:b], i_inv[b:]
        bpr = bpr_loss(u_g, z_i[p], z_i[n])
        out: dict[str, Tensor] = {}
        modal = []
        for m in self.modalities:
            f = self.projected(m, ii)
            term = bpr_loss(u_g, f[p], f[n])
            modal.append(term)
            out[f"bpr_{m}"] = term.detach()
        reg = self.reg_weight * torch.stack(modal).sum()
        return {"loss": bpr + reg, "bpr": bpr.detach(), "reg": reg.detach(), **out}

    @torch.no_grad()
    def representations(self, view: str = "fused") -> tuple[Tensor, Tensor]:
        """Detached ``(users, items)`` on the full graph (eval mode): ``"fused"`` the vectors it
        scores with, ``(u_g, i_g + h)``; ``"id"`` the user-item part ``(u_g, i_g)``."""
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {self.VIEWS}, got {view!r}")
        was_training = self.training
        self.eval()
        try:
            u, i = self.split(self.behavior_view())
            if view == "fused":
                i = i + self.item_graph_view()
        finally:
            self.train(was_training)
        return u.detach(), i.detach()
