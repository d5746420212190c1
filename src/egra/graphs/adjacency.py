"""Normalised user-item and enhanced (user-item + item-item) adjacencies, as scipy CSR."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary ``R`` (``n_users x n_items``); repeated pairs count once."""
    r = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (np.asarray(users), np.asarray(items))),
        shape=(n_users, n_items),
    )
    r.sum_duplicates()
    r.data[:] = 1.0
    return r


def sym_normalize(a: sp.spmatrix) -> sp.csr_matrix:
    """``D^{-1/2} A D^{-1/2}`` with ``D`` the row sums; zero-degree rows stay zero (MGCN's rule)."""
    a = sp.csr_matrix(a, dtype=np.float32)
    deg = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        d = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0).astype(np.float32)
    dm = sp.diags(d)
    out = (dm @ a @ dm).tocsr()
    out.sort_indices()
    return out


def bipartite_adjacency(
    r: sp.spmatrix, item_item: sp.spmatrix | None = None, beta: float = 1.0
) -> sp.csr_matrix:
    """``[[0, R], [Rᵀ, β·S]]`` (unnormalised), square of size ``U + I``.

    With ``item_item=None`` or ``beta == 0`` this is the plain user-item graph of LightGCN.
    """
    r = sp.csr_matrix(r, dtype=np.float32)
    n_users, n_items = r.shape
    ii = None
    if item_item is not None and beta != 0:
        ii = sp.csr_matrix(item_item, dtype=np.float32) * np.float32(beta)
        if ii.shape != (n_items, n_items):
            raise ValueError(f"item-item block has shape {ii.shape}, expected ({n_items}, {n_items})")
    a = sp.bmat([[None, r], [r.T, ii]], format="csr", dtype=np.float32)
    # bmat needs a shape anchor for an all-None block row; R and Rᵀ provide it.
    return a


def normalized_bipartite(
    r: sp.spmatrix, item_item: sp.spmatrix | None = None, beta: float = 1.0
) -> sp.csr_matrix:
    """``norm([[0, R], [Rᵀ, β·S]])`` — LightGCN's ``Â`` or EGRA's ``Â_e``."""
    return sym_normalize(bipartite_adjacency(r, item_item, beta))


#: How ``S^pt`` enters the enhanced graph (the paper leaves it open).
PT_NORMS = ("joint", "separate")


def enhanced_adjacency(
    r: sp.spmatrix, item_item: sp.spmatrix | None, beta: float = 1.0, pt_norm: str = "joint"
) -> sp.csr_matrix:
    """EGRA's normalised enhanced behavior graph ``Â_e``.

    ``joint``: ``norm([[0, R], [Rᵀ, β·S]])`` -- one normalisation, so the item-item edges
    add to every item's degree and shrink its user-item message weights.
    ``separate``: ``norm([[0, R], [Rᵀ, 0]]) + [[0, 0], [0, β·norm(S)]]`` -- the user-item
    weights stay LightGCN's and ``S`` adds a separately normalised item-item term of
    weight ``β`` (the form of LATTICE/FREEDOM-style item graphs).
    ``item_item=None`` or ``β = 0`` gives LightGCN's ``Â`` either way.
    """
    if pt_norm not in PT_NORMS:
        raise ValueError(f"pt_norm must be one of {PT_NORMS}, got {pt_norm!r}")
    if pt_norm == "joint" or item_item is None or beta == 0:
        return normalized_bipartite(r, item_item, beta)
    n_users = r.shape[0]
    ii = sym_normalize(item_item) * np.float32(beta)
    if ii.shape != (r.shape[1], r.shape[1]):
        raise ValueError(f"item-item block has shape {ii.shape}, expected ({r.shape[1]}, {r.shape[1]})")
    out = (normalized_bipartite(r) + sp.block_diag([sp.csr_matrix((n_users, n_users)), ii])).tocsr()
    out.sort_indices()
    return out


def user_item_block(a_norm: sp.csr_matrix, n_users: int) -> sp.csr_matrix:
    """The user x item block ``R̂`` of a normalised bipartite adjacency."""
    return a_norm[:n_users, n_users:].tocsr()
