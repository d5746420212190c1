"""Modality kNN graphs denoised by cross-modal consistency (DA-MRS's item-item graphs).

A pair of items is a *candidate* edge only when every modality agrees that they are
similar: with ``s^m_ij`` the cosine of items ``i`` and ``j`` in modality ``m`` and
``μ^m = mean_{i,j} s^m_ij`` the mean over all ``N²`` pairs (the item with itself included),

    candidate(i, j)  ⇔  s^m_ij ≥ μ^m  for every modality m.

Each modality's graph then links ``i`` to its top-``min(k, |candidates of i|)`` candidates by
that modality's cosine (binary, directed; the item itself is normally among them, its cosine
being 1), normalised ``D^{-1/2} A D^{-1/2}`` with row sums. A pair that looks alike in one
modality only (a rug and a painting with similar textures) is no edge in any graph.

``μ^m`` needs no ``N x N`` matrix: ``Σ_ij x̂_i·x̂_j = ‖Σ_i x̂_i‖²`` for unit rows ``x̂``. The
rows are processed in chunks, so the working memory is ``O(chunk · N · |modalities|)``.
All-zero feature rows stay zero (cosine 0 with every item) and follow the same rule.
The search is exact; ties at the cut are broken as ``torch.topk`` breaks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from egra.graphs.adjacency import sym_normalize

#: Largest ``rows x items`` similarity block computed at a time (float32 entries, per modality).
MAX_BLOCK = 1 << 24


def unit_rows(x: Any, device: str = "cpu") -> torch.Tensor:
    """Float32 L2-normalised rows (all-zero rows stay zero)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    norm = t.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, t / norm.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(t))


def mean_cosine(xn: torch.Tensor) -> float:
    """``mean_{i,j} x̂_i·x̂_j`` over all ``N²`` pairs of unit rows, as ``‖Σ_i x̂_i‖² / N²`` (float64)."""
    s = xn.to(torch.float64).sum(dim=0)
    return float((s @ s) / float(xn.shape[0]) ** 2)


def consistent_knn_graphs(
    features: Mapping[str, Any],
    k: int,
    modalities: Sequence[str] | None = None,
    *,
    chunk_size: int = 4096,
    device: str = "cpu",
) -> dict[str, sp.csr_matrix]:
    """One normalised kNN graph per modality, edges restricted to cross-modally consistent pairs.

    ``modalities`` (default: sorted keys of ``features``) are the modalities that vote and get
    a graph; all must have the same number of rows. ``device``: a torch device for the
    similarity blocks ("cpu", "cuda", "cuda:N").
    """
    names = sorted(features) if modalities is None else list(modalities)
    if not names:
        raise ValueError("consistent_knn_graphs needs at least one modality")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dev = torch.device(device)
    xs = {m: unit_rows(features[m], dev) for m in names}
    n = {x.shape[0] for x in xs.values()}
    if len(n) != 1:
        raise ValueError(
            f"modalities have different numbers of rows: { {m: x.shape[0] for m, x in xs.items()} }"
        )
    n_items = n.pop()
    means = {m: mean_cosine(x) for m, x in xs.items()}
    k_eff = min(int(k), n_items)
    step = max(1, min(int(chunk_size), MAX_BLOCK // max(1, n_items)))
    rows: dict[str, list[np.ndarray]] = {m: [] for m in names}
    cols: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for start in range(0, n_items, step):
        end = min(start + step, n_items)
        sims = {m: xs[m][start:end] @ xs[m].T for m in names}
        keep = torch.ones_like(sims[names[0]], dtype=torch.bool)
        for m in names:
            keep &= sims[m] >= means[m]
        for m in names:
            top = sims[m].masked_fill(~keep, float("-inf")).topk(k_eff, dim=1)
            ok = torch.isfinite(top.values)  # fewer than k candidates: the -inf slots are no edges
            r = torch.arange(start, end, device=dev).unsqueeze(1).expand_as(ok)
            rows[m].append(r[ok].cpu().numpy())
            cols[m].append(top.indices[ok].cpu().numpy())
    out = {}
    for m in names:
        r, c = np.concatenate(rows[m]), np.concatenate(cols[m])
        a = sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=(n_items, n_items))
        g = sym_normalize(a)
        g.eliminate_zeros()
        g.sort_indices()
        out[m] = g
    return out
