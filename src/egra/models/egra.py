"""EGRA: enhanced behavior graph + bi-level weighted representation alignment.

Zhang et al., "EGRA: Toward Enhanced Behavior Graphs and Representation Alignment for
Multimodal Recommendation" (arXiv 2508.16170), as this project reads it (docs/method.md):

* behavior view ``E^b``: LightGCN (mean of layers ``0..L_b``) on
  ``Â_e = norm([[0, R], [Rᵀ, β·S^pt]])``, where ``S^pt`` is the top-``k_pt`` item-item
  graph of a pretrained backbone's item vectors;
* per modality: ``Z_m = E_I ⊙ σ(W_m X_m + b_m)`` (behavior-corrected feature), ``L_m``
  layers on the raw-feature kNN graph ``S^m``, users ``R̂ Z_m`` (plain user-item block);
* fusion as MGCN's: shared part by attention, specific parts gated by ``σ(W_p,m E^b)``,
  ``E^mm = (C + Σ_m P_m ⊙ S_m) / (|M| + 1)``; prediction from ``E = E^b + E^mm``.

Loss: ``BPR + λ(t)·L_align + η·L2``. ``L_align`` is InfoNCE between the behavior and
modality views of the batch's users and positive items, each entity weighted by
``w = n·softmax(∓cos(e^b, e^mm)/τ_w)`` (no gradient). ``λ(t)`` is set from outside each
epoch (``align_weight``; see ``egra.training.callbacks.AlignmentSchedule``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from egra.graphs import PT_NORMS, SparseOp, enhanced_adjacency, interaction_matrix
from egra.models.losses import info_nce, info_nce_counts
from egra.models.mgcn import MGCN, project

WEIGHTING_MODES = ("misaligned_up", "aligned_up", "uniform")
RAMPS = ("linear", "cosine", "step")
#: ``raw``: ``λ·(NCE_u + NCE_i)`` as written; ``chance``: each NCE divided by its value at
#: chance, ``ln B`` (B = batch positions), so λ weighs alignment against BPR in units
#: that do not move with the batch size.
ALIGN_SCALES = ("raw", "chance")
#: ``fused``: behavior view vs the fused modality view ``E^mm``; ``per_modality``: behavior
#: view vs each modality's ``E^m`` before fusion, averaged over modalities.
ALIGN_VIEWS = ("fused", "per_modality")
#: Which view anchors the InfoNCE (its negatives come from the other view): ``behavior``
#: (``NCE(e^b, e^mm)``) or ``modality`` (``NCE(e^mm, e^b)``, the direction of MGCN's loss).
ALIGN_ANCHORS = ("behavior", "modality")
#: ``gate``: ``Z_m = E_I ⊙ σ(W_m X_m + b_m)`` (the method page's reading); ``purifier``:
#: MGCN's purifier ``E_I ⊙ σ(G_m(W_m X_m + b_m))``, one more d x d map per modality.
MODALITY_INPUTS = ("gate", "purifier")


def entity_weights(alignment: Tensor, mode: str, tau_w: float) -> Tensor:
    """Per-entity weights with mean 1: ``n · softmax(−a/τ_w)`` pulls misaligned ones harder."""
    n = alignment.shape[0]
    if mode == "uniform":
        return torch.ones_like(alignment)
    if mode == "misaligned_up":
        return n * torch.softmax(-alignment / tau_w, dim=0)
    if mode == "aligned_up":
        return n * torch.softmax(alignment / tau_w, dim=0)
    raise ValueError(f"entity_weighting must be one of {WEIGHTING_MODES}, got {mode!r}")


def weighted_nce(
    behavior: Tensor, modality: Tensor, tau: float, mode: str, tau_w: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``Σ w·NCE_τ(e^b, e^mm) / Σ w`` with weights from the detached alignment degree.

    Returns (loss, weights, alignment degrees).
    """
    with torch.no_grad():
        a = torch.nn.functional.cosine_similarity(behavior, modality, dim=-1)
        w = entity_weights(a, mode, tau_w)
    per_row = info_nce(behavior, modality, tau, reduction="none")
    return (w * per_row).sum() / w.sum(), w, a


def weighted_nce_counts(
    behavior: Tensor, modality: Tensor, tau: float, mode: str, tau_w: float, counts: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`weighted_nce` of a batch given by its distinct rows and their multiplicities.

    With ``uniq, counts = idx.unique(return_counts=True)`` the loss equals
    ``weighted_nce(B[idx], M[idx], …)``: the entity softmax runs over the batch's
    positions (a row repeated ``c`` times holds ``c`` shares of it) and every position
    keeps its own weight, and the InfoNCE is :func:`info_nce_counts`. Returns (loss,
    weights of the distinct rows, their alignment degrees).
    """
    with torch.no_grad():
        a = torch.nn.functional.cosine_similarity(behavior, modality, dim=-1)
        c = counts.to(a.dtype)
        if mode == "uniform":
            w = torch.ones_like(a)
        elif mode in ("misaligned_up", "aligned_up"):
            s = (-a if mode == "misaligned_up" else a) / tau_w
            # n · softmax over positions: exp(s_j) / Σ_k c_k exp(s_k), in log space.
            w = c.sum() * torch.exp(s - torch.logsumexp(s + c.log(), dim=0))
        else:
            raise ValueError(f"entity_weighting must be one of {WEIGHTING_MODES}, got {mode!r}")
        cw = c * w
    loss = info_nce_counts(behavior, modality, tau, counts=c, weights=cw / cw.sum())
    return loss, w, a


class EGRA(MGCN):
    """EGRA on top of MGCN's modality encoders and fuser (see module docstring).

    ``item_graph`` is ``S^pt`` (``[I, I]`` sparse, unnormalised) or None for EGRA without
    the enhanced graph; ``modality_graphs`` are the raw-feature graphs ``S^m`` (as MGCN's).
    Both are built by the pipeline's graph stage; checkpoints name them by content.
    """

    def __init__(
        self,
        *,
        n_users: int,
        n_items: int,
        train_users: np.ndarray,
        train_items: np.ndarray,
        features: Mapping[str, np.ndarray | Tensor] | None = None,
        modality_graphs: Mapping[str, sp.spmatrix] | None = None,
        item_graph: sp.spmatrix | None = None,
        embedding_dim: int = 64,
        n_behavior_layers: int = 2,
        n_modality_layers: int = 1,
        beta: float = 1.0,
        lambda_min: float = 0.001,
        lambda_max: float = 0.1,
        P: int = 10,
        ramp: str = "linear",
        lambda_warmup: int = 0,
        tau_u: float = 0.2,
        tau_i: float = 0.2,
        tau_w: float = 1.0,
        entity_weighting: str = "misaligned_up",
        cross_pairs: bool = False,
        align_scale: str = "raw",
        align_views: str = "fused",
        align_anchor: str = "behavior",
        pt_norm: str = "joint",
        modality_input: str = "gate",
        reg_weight: float = 1e-4,
        reg_denominator: float = 2048,
        train_features: bool = True,
        modalities: Sequence[str] | None = None,
    ):
        super().__init__(
            n_users=n_users,
            n_items=n_items,
            train_users=train_users,
            train_items=train_items,
            features=features,
            modality_graphs=modality_graphs,
            embedding_dim=embedding_dim,
            n_ui_layers=n_behavior_layers,
            n_layers=n_modality_layers,
            reg_weight=reg_weight,
            cl_loss=0.0,
            reg_denominator=reg_denominator,
            train_features=train_features,
            modalities=modalities,
        )
        if entity_weighting not in WEIGHTING_MODES:
            raise ValueError(f"entity_weighting must be one of {WEIGHTING_MODES}, got {entity_weighting!r}")
        if ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {RAMPS}, got {ramp!r}")
        for name, value, choices in (
            ("align_scale", align_scale, ALIGN_SCALES),
            ("align_views", align_views, ALIGN_VIEWS),
            ("align_anchor", align_anchor, ALIGN_ANCHORS),
            ("pt_norm", pt_norm, PT_NORMS),
            ("modality_input", modality_input, MODALITY_INPUTS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.modality_input, self.align_anchor = modality_input, align_anchor
        if modality_input == "gate":  # one gate on the raw projection: no separate purifier
            self.purifier = nn.ModuleDict()
        self.beta = float(beta)
        self.lambda_min, self.lambda_max, self.P, self.ramp = (
            float(lambda_min),
            float(lambda_max),
            int(P),
            ramp,
        )
        self.lambda_warmup = int(lambda_warmup)
        self.align_scale, self.align_views, self.pt_norm = align_scale, align_views, pt_norm
        self.tau_u, self.tau_i, self.tau_w = float(tau_u), float(tau_i), float(tau_w)
        self.entity_weighting = entity_weighting
        self.cross_pairs = bool(cross_pairs)
        #: λ(t), set at every epoch start by the schedule callback; λ_max until then.
        self.align_weight = self.lambda_max
        self._interactions = interaction_matrix(train_users, train_items, self.n_users, self.n_items)
        #: ``S^pt`` as given (unnormalised; None without one): what :meth:`set_item_graph` last set.
        self.item_graph: sp.csr_matrix | None = None
        self.has_item_graph = False
        if item_graph is not None:
            self.set_item_graph(item_graph)

    def set_item_graph(self, item_graph: sp.spmatrix | None) -> None:
        """Use ``item_graph`` as ``S^pt`` from now on: rebuilds ``Â_e`` (``self.adj``) with the
        model's ``β`` and ``pt_norm``, on the device of its parameters.

        None, an empty graph or ``β = 0`` give LightGCN's ``Â`` (EGRA without the enhanced
        graph). The constructor's ``item_graph`` goes through here; ``graph_source=self``
        swaps in graphs of the model's own item vectors during training (the training
        layer builds them: ``egra.training.callbacks.GraphRefresh``).
        """
        g = None if item_graph is None else sp.csr_matrix(item_graph, dtype=np.float32)
        if g is not None and g.shape != (self.n_items, self.n_items):
            raise ValueError(f"item_graph has shape {g.shape}, expected ({self.n_items},) * 2")
        self.item_graph = g
        self.has_item_graph = g is not None and self.beta != 0 and g.nnz > 0
        a_e = enhanced_adjacency(
            self._interactions, g if self.has_item_graph else None, self.beta, self.pt_norm
        )
        self.adj = SparseOp(a_e).to(self.item_emb.device)

    def purified(self, m: str) -> Tensor:
        """``Z_m = E_I ⊙ σ(W_m X_m + b_m)`` — ``[I, d]`` (``modality_input="purifier"``: MGCN's)."""
        if self.modality_input == "purifier":
            return super().purified(m)
        return self.item_emb * torch.sigmoid(project(self.proj[m], self.feature(m)))

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """BPR + squared-L2 on the batch rows of ``E`` + ``λ(t)`` · weighted alignment.

        As in :meth:`MGCN.loss`, the fuser runs on the batch's distinct users and items
        and the alignment InfoNCEs on distinct rows with multiplicities
        (:func:`weighted_nce_counts`): the numbers of the per-position computation.
        """
        b = users.shape[0]
        t = self.batch_terms(users, pos, neg)
        v, nu, u_inv, u_cnt, i_inv = t.views, t.n_users, t.user_inverse, t.user_counts, t.item_inverse
        p_rows, p_cnt = t.pos_rows, t.pos_counts
        out = {"bpr": t.bpr.detach(), "reg": t.reg.detach()}
        total = t.bpr + t.reg
        lam = float(self.align_weight)
        if lam != 0.0:
            eb = v.content  # behavior view E^b
            targets = [v.side] if self.align_views == "fused" else [v.modal[m] for m in self.modalities]
            mode, tw = self.entity_weighting, self.tau_w
            if self.align_anchor == "modality":  # NCE(e^mm, e^b); cosine degrees are symmetric
                pairs = [(emm, eb) for emm in targets]
            else:
                pairs = [(eb, emm) for emm in targets]
            terms = [
                (
                    weighted_nce_counts(a[:nu], p[:nu], self.tau_u, mode, tw, u_cnt),
                    weighted_nce_counts(a[p_rows], p[p_rows], self.tau_i, mode, tw, p_cnt),
                )
                for a, p in pairs
            ]
            align = sum(u[0] + i[0] for u, i in terms) / len(terms)
            # Weights and degrees for the logs: means over the aligned pairs.
            w_u, a_u, w_i, a_i = (
                torch.stack([pair[side][j] for pair in terms]).mean(0)
                for side, j in ((0, 1), (0, 2), (1, 1), (1, 2))
            )
            if self.cross_pairs:
                # (user behavior, interacted item modality) as extra positive pairs.
                align = align + info_nce(eb[u_inv], v.side[nu + i_inv[:b]], self.tau_u)
            if self.align_scale == "chance":
                align = align / math.log(max(b, 2))
            total = total + lam * align
            # Statistics over the batch's positions, as if every row were repeated.
            c_u, c_i = u_cnt.to(w_u.dtype), p_cnt.to(w_i.dtype)
            w = torch.cat([w_u, w_i])
            out.update(
                {
                    "align": align.detach(),
                    "align/weight_mean": ((c_u * w_u).sum() + (c_i * w_i).sum()) / (2 * b),
                    "align/weight_min": w.min(),
                    "align/weight_max": w.max(),
                    "align/degree_user": (c_u * a_u).sum() / b,
                    "align/degree_item": (c_i * a_i).sum() / b,
                }
            )
        out["loss"] = total
        return out
