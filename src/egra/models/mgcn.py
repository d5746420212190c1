"""MGCN (Yu et al., ACM MM 2023) as MMRec runs it: multi-view graph convolution.

Written to match MMRec's MGCN (its model and its kNN graph conventions):

* content (behavior) view ``C``: LightGCN on the normalised user-item graph, mean of
  layers ``0..n_ui_layers``;
* per modality ``m``: projection ``F_m = X_m W_mᵀ + b_m`` of the (trainable) raw
  features, purifier ``Ĥ_m = E_I ⊙ σ(G_m F_m)``, item-item propagation
  ``H_m^I = S_m^{n_layers} Ĥ_m`` on the fixed kNN graph, users ``H_m^U = R̂ H_m^I``;
* fuser: softmax attention over modalities gives the common part ``H_c``; the specific
  parts ``H_m − H_c`` are gated by ``σ(P_m C)``; ``S = (Σ_m H̃_m + H_c) / (M + 1)``
  (``/3`` for two modalities, as in MGCN);
* final ``Z = C + S``.

Loss: BPR on ``Z`` + ``reg_weight · ½ Σ‖Z rows‖² / reg_denominator`` + ``cl_loss ·
(NCE(S_I[i⁺], C_I[i⁺]) + NCE(S_U[u], C_U[u]))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egra.graphs import SparseOp, interaction_matrix, normalized_bipartite, sparse, user_item_block
from egra.graphs.dense import mm as dense_mm
from egra.models.base import Recommender
from egra.models.lightgcn import propagate_mean
from egra.models.losses import bpr_loss, info_nce_counts, l2_squared


class MGCNViews(NamedTuple):
    """Node representations of one forward pass, all with the same rows (``[rows, d]``).

    ``content`` is the behavior view ``C``, ``side`` the fused modality view ``S``,
    ``fused`` the final ``Z = C + S`` and ``modal[m]`` the per-modality ``H_m`` before
    the fuser. From ``MGCN.views()`` the rows are all ``U + I`` nodes, users first;
    from ``MGCN.views(users, items)`` the requested users followed by the requested items.
    """

    content: Tensor
    side: Tensor
    fused: Tensor
    modal: dict[str, Tensor]


class BatchTerms(NamedTuple):
    """What :meth:`MGCN.batch_terms` computes for one batch (see there)."""

    views: MGCNViews
    n_users: int
    user_inverse: Tensor
    user_counts: Tensor
    item_inverse: Tensor
    pos_rows: Tensor
    pos_counts: Tensor
    bpr: Tensor
    reg: Tensor


class _BlockedLinear(torch.autograd.Function):
    """``x Wᵀ + b`` for a tall float32 ``x`` on the CPU (the raw feature tables).

    Forward by row blocks through torch/MKL (a few hundred rows at a time run ~10% faster
    than one call). The two backward products go through :func:`egra.graphs.dense.mm`
    (OpenBLAS): ``∂x = g W`` has inner dimension ``d`` = 64, where MKL is ~1.5x slower
    on the benchmark machine, and ``∂W = gᵀ x`` is ~15% faster there too. Every output
    entry is the same dot product; only the BLAS's summation order differs.
    """

    ROWS = 256

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = x.new_empty(x.shape[0], weight.shape[0])
        wt = weight.T
        for r in range(0, x.shape[0], _BlockedLinear.ROWS):
            rows = slice(r, r + _BlockedLinear.ROWS)
            if bias is None:
                torch.mm(x[rows], wt, out=out[rows])
            else:
                torch.addmm(bias, x[rows], wt, out=out[rows])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = dense_mm(grad, weight)
        if ctx.needs_input_grad[1]:
            grad_w = dense_mm(grad.T, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=0)
        return grad_x, grad_w, grad_b


def project(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``; for large float32 inputs on the CPU through :class:`_BlockedLinear`."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() < (1 << 22) or x.dim() != 2:
        return layer(x)
    return _BlockedLinear.apply(x.contiguous(), layer.weight, layer.bias)


def _as_float_tensor(x) -> Tensor:
    """A float32 copy that owns its memory (training must not write into the caller's array)."""
    if isinstance(x, Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    return torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))


class MGCN(Recommender):
    """Multi-View Graph Convolutional Network, faithful to MMRec's ``MGCN``.

    ``modalities`` defaults to the sorted keys of ``features``; one modality works (the
    fuser then has a single attention weight of 1 and ``S = H_c / 2``).
    With ``train_features=True`` (MMRec's behaviour) the raw feature tables are
    parameters ``feat_<m>``; otherwise they are non-persistent buffers.
    ``modality_graphs`` are the fixed, normalised item-item kNN graphs ``S_m`` of the raw
    features, one per modality (``egra.graphs.modality_graphs``; the pipeline's graph
    stage builds and caches them). The model never searches neighbours itself.
    """

    VIEWS = ("fused", "id", "modality")

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
        n_layers: int = 1,
        reg_weight: float = 1e-4,
        cl_loss: float = 0.01,
        tau: float = 0.2,
        reg_denominator: float = 2048,
        train_features: bool = True,
        modalities: Sequence[str] | None = None,
    ):
        super().__init__()
        if not features:
            raise ValueError("MGCN needs at least one modality: `features` is empty or None")
        if modalities is None:
            modalities = sorted(features)
        modalities = list(modalities)
        if not modalities:
            raise ValueError("MGCN needs at least one modality: `modalities` is empty")
        missing = [m for m in modalities if m not in features]
        if missing:
            raise ValueError(f"modalities {missing} not in features (have {sorted(features)})")
        no_graph = [m for m in modalities if m not in (modality_graphs or {})]
        if no_graph:
            raise ValueError(
                f"no kNN graph S_m for modalities {no_graph} in `modality_graphs`: "
                "build them with egra.graphs.modality_graphs(features, k)"
            )

        self.n_users, self.n_items = int(n_users), int(n_items)
        self.embedding_dim = embedding_dim
        self.n_ui_layers, self.n_layers = n_ui_layers, n_layers
        self.reg_weight, self.cl_loss, self.tau = reg_weight, cl_loss, tau
        self.reg_denominator = float(reg_denominator)
        self.train_features = train_features
        self.modalities = tuple(modalities)

        d = embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))

        # Graphs: normalised user-item adjacency and its user x item block R̂.
        r = interaction_matrix(train_users, train_items, self.n_users, self.n_items)
        a_norm = normalized_bipartite(r)
        self.adj = SparseOp(a_norm)
        self.r_hat = SparseOp(user_item_block(a_norm, self.n_users))

        self.proj = nn.ModuleDict()
        self.purifier = nn.ModuleDict()
        self.prefer = nn.ModuleDict()
        self.item_graphs = nn.ModuleDict()
        for m in self.modalities:
            x = _as_float_tensor(features[m])
            if x.ndim != 2 or x.shape[0] != self.n_items:
                raise ValueError(f"features[{m!r}] has shape {tuple(x.shape)}, expected ({self.n_items}, d)")
            graph = sp.csr_matrix(modality_graphs[m], dtype=np.float32)
            if graph.shape != (self.n_items, self.n_items):
                raise ValueError(
                    f"modality_graphs[{m!r}] has shape {graph.shape}, expected ({self.n_items},) * 2"
                )
            self.item_graphs[m] = SparseOp(graph)
            if train_features:
                self.register_parameter(f"feat_{m}", nn.Parameter(x))
            else:
                self.register_buffer(f"feat_{m}", x, persistent=False)
            self.proj[m] = nn.Linear(x.shape[1], d)
            self.purifier[m] = nn.Linear(d, d)
            self.prefer[m] = nn.Linear(d, d)
        # Shared attention scorer q(x) = w₂ᵀ tanh(W₁x + b₁).
        self.query = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

    # ----------------------------------------------------------------- pieces
    def feature(self, m: str) -> Tensor:
        """Raw feature table ``X_m`` (``[I, d_m]``; a parameter when trainable)."""
        return getattr(self, f"feat_{m}")

    def content_view(self, rows: Tensor | None = None) -> Tensor:
        """``C = mean_{l=0..L} Â^l [E_U; E_I]`` — ``[U + I, d]``, or its ``rows`` (node ids)."""
        x0 = torch.cat([self.user_emb, self.item_emb], dim=0)
        return propagate_mean(self.adj, x0, self.n_ui_layers, rows)

    def purified(self, m: str) -> Tensor:
        """``Ĥ_m = E_I ⊙ σ(G_m(X_m W_mᵀ + b_m))`` — ``[I, d]``."""
        f = project(self.proj[m], self.feature(m))
        return self.item_emb * torch.sigmoid(self.purifier[m](f))

    def item_modality_view(self, m: str, item_ids: np.ndarray | None = None) -> Tensor:
        """``H_m^I = S_m^{n_layers} Ĥ_m`` — ``[I, d]``, or its rows ``item_ids`` (the last
        item-graph layer then runs for those rows only; same numbers)."""
        h = self.purified(m)
        graph = self.item_graphs[m]
        if item_ids is None:
            for _ in range(self.n_layers):
                h = graph(h)
            return h
        if self.n_layers == 0:
            return h[torch.from_numpy(item_ids).to(h.device)]
        for _ in range(self.n_layers - 1):
            h = graph(h)
        return graph.rows(h, torch.from_numpy(item_ids))

    def _batch_items(self, users: Tensor | None, items: Tensor | None) -> np.ndarray | None:
        """Sorted ids of the items whose ``H_m^I`` rows the batch reads, or None for all.

        Those are the requested items and every item ``R̂[users]`` touches; None as well
        when they exceed ``egra.graphs.sparse.MAX_ROW_SUBSET`` of the catalog (a Baby batch
        reads ~98% of its items, one of the 200k-item scale catalog 20%) or off the CPU.
        """
        graph = next(iter(self.item_graphs.values()))
        if graph.cpu_matrices(self.item_emb) is None or self.r_hat.cpu_matrices(self.item_emb) is None:
            return None
        if users is None:
            need = np.unique(items.detach().cpu().numpy())
        else:
            need = self.r_hat.columns(users, items)
        return need if len(need) <= sparse.MAX_ROW_SUBSET * self.n_items else None

    def modality_view(self, m: str) -> Tensor:
        """``H_m = [R̂ H_m^I; H_m^I]`` — ``[U + I, d]``."""
        h = self.item_modality_view(m)
        return torch.cat([self.r_hat(h), h], dim=0)

    def fuse(self, content: Tensor, modal: Mapping[str, Tensor]) -> Tensor:
        """Behavior-aware fuser, row by row: ``S = (Σ_m σ(P_m C) ⊙ (H_m − H_c) + H_c) / (M + 1)``.

        ``content`` and every ``modal[m]`` hold the same rows (any subset of nodes).
        """
        stacked = torch.stack([modal[m] for m in self.modalities], dim=0)  # [M, N, d]
        att = torch.softmax(self.query(stacked), dim=0)  # [M, N, 1]: softmax over modalities
        common = (att * stacked).sum(dim=0)
        # all preference gates in one product: [N, M·d]
        gates = torch.sigmoid(
            F.linear(
                content,
                torch.cat([self.prefer[m].weight for m in self.modalities], dim=0),
                torch.cat([self.prefer[m].bias for m in self.modalities], dim=0),
            )
        )
        gates = gates.view(content.shape[0], len(self.modalities), -1).transpose(0, 1)  # [M, N, d]
        side = common + (gates * (stacked - common)).sum(dim=0)
        return side / (len(self.modalities) + 1)

    def views(self, users: Tensor | None = None, items: Tensor | None = None) -> MGCNViews:
        """Content ``C``, side ``S``, final ``Z`` and per-modality ``H_m`` of some nodes.

        Without arguments: every node, ``[U + I, d]`` with users first. With ``users``
        and/or ``items`` (id tensors, repeats allowed): the rows ``users`` followed by the
        rows ``items``. Everything after the modality features' item graphs runs for the
        requested rows alone: the last layer of ``C`` (``Â[rows] Â^{L-1} x0``), the user
        step ``R̂[users] H_m^I`` and the fuser, which works row by row (that is what makes a
        training step cheap: a batch touches a few thousand of the ``U + I`` rows).
        """
        if users is None and items is None:
            content = self.content_view()
            modal = {}
            for m in self.modalities:
                h = self.item_modality_view(m)
                modal[m] = torch.cat([self.r_hat(h), h], dim=0)
        else:
            # Only the requested rows: the last propagation step of C and the user step
            # R̂ H_m^I are computed for them alone (same numbers as the full views' rows),
            # and so is the last item-graph step when the batch reads few items.
            node_rows = [r for r in (users, None if items is None else items + self.n_users) if r is not None]
            content = self.content_view(torch.cat(node_rows) if len(node_rows) > 1 else node_rows[0])
            need = self._batch_items(users, items)
            modal = {}
            for m in self.modalities:
                h = self.item_modality_view(m, need)
                parts = []
                if users is not None:
                    parts.append(self.r_hat.rows(h, users, x_rows=need))
                if items is not None:
                    at = (
                        items
                        if need is None
                        else torch.from_numpy(np.searchsorted(need, items.cpu().numpy()))
                    )
                    parts.append(h[at.to(h.device)])
                modal[m] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        side = self.fuse(content, modal)
        return MGCNViews(content=content, side=side, fused=content + side, modal=modal)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[U + I, d]`` → ``(users [U, d], items [I, d])``."""
        return x[: self.n_users], x[self.n_users :]

    # -------------------------------------------------------------- contract
    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.split(self.views().fused)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """BPR + squared-L2 on the batch rows of ``Z`` + ``cl_loss`` · (item NCE + user NCE).

        The fuser runs on the batch's distinct users and items only, and each InfoNCE on
        distinct rows with multiplicities (:func:`info_nce_counts`): the same numbers as
        with per-position rows, where a repeated id is its own false negative.
        """
        t = self.batch_terms(users, pos, neg)
        v, nu = t.views, t.n_users
        total = t.bpr + t.reg
        if self.cl_loss != 0:
            cl_items = info_nce_counts(v.side[t.pos_rows], v.content[t.pos_rows], self.tau, t.pos_counts)
            cl_users = info_nce_counts(v.side[:nu], v.content[:nu], self.tau, t.user_counts)
            cl = self.cl_loss * (cl_items + cl_users)
            total = total + cl
        else:
            cl = torch.zeros((), device=total.device)
        return {"loss": total, "bpr": t.bpr.detach(), "reg": t.reg.detach(), "cl": cl.detach()}

    def batch_terms(self, users: Tensor, pos: Tensor, neg: Tensor) -> BatchTerms:
        """Views of a batch's distinct users and items, and BPR + squared-L2 on their ``Z``.

        The part of the loss MGCN and EGRA share; rows of ``views`` are the distinct users
        then the distinct items, ``pos_rows`` / ``pos_counts`` the distinct positives' rows
        there and their multiplicities (for counted InfoNCEs).
        """
        b = users.shape[0]
        uu, u_inv, u_cnt = torch.unique(users, return_inverse=True, return_counts=True)
        ii, i_inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        nu = uu.shape[0]
        v = self.views(uu, ii)
        z_u, z_i = v.fused[:nu], v.fused[nu:]
        u, p, n = z_u[u_inv], z_i[i_inv[:b]], z_i[i_inv[b:]]
        bpr = bpr_loss(u, p, n)
        reg = self.reg_weight * l2_squared(u, p, n, denom=self.reg_denominator)
        p_rows, p_cnt = torch.unique(i_inv[:b], return_counts=True)
        return BatchTerms(v, nu, u_inv, u_cnt, i_inv, p_rows + nu, p_cnt, bpr, reg)

    @torch.no_grad()
    def representations(self, view: str = "fused") -> tuple[Tensor, Tensor]:
        """Detached ``(users, items)`` of one view, computed in eval mode.

        ``"fused"``: ``Z``; ``"id"``: the behavior/content view ``C``; ``"modality"``:
        the side view ``S``.
        """
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {self.VIEWS}, got {view!r}")
        was_training = self.training
        self.eval()
        try:
            v = self.views()
        finally:
            self.train(was_training)
        x = {"fused": v.fused, "id": v.content, "modality": v.side}[view]
        u, i = self.split(x.detach())
        return u, i

    def item_representations(self, view: str = "fused") -> Tensor:
        """Detached item vectors for export: ``Z_I`` (fused), ``C_I`` (id) or ``S_I`` (modality)."""
        return self.representations(view)[1]
