"""The item-item co-interaction graph: which items the same users interacted with.

``C = Rᵀ R`` with the diagonal removed, ``R`` the binary user x item matrix of the train
interactions: ``C_ij`` counts the users who interacted with both ``i`` and ``j``. Pairs seen
by fewer than ``min_count`` users are dropped (one shared user is mostly chance), and each
item keeps its ``k`` most co-interacted items with their counts as weights. This is the
item-item behaviour graph DA-MRS builds before training (its ``build_iib_graph`` step);
the model decides how to normalise it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from egra.graphs.adjacency import interaction_matrix


def cooccurrence_counts(users: np.ndarray, items: np.ndarray, n_items: int) -> sp.csr_matrix:
    """``C = RᵀR`` without its diagonal (int64 CSR, ``n_items x n_items``, symmetric).

    Repeated (user, item) pairs count once.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n_users = int(users.max()) + 1 if users.size else 0
    r = interaction_matrix(users, items, n_users, int(n_items)).astype(np.int64)
    c = (r.T @ r).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    c.sort_indices()
    return c


def top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest entries of ``m`` (ties: the lower column id first); the rest dropped."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    n = m.shape[0]
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    # Sorted by row, then by decreasing value, then by column: a deterministic order.
    order = np.lexsort((m.indices, -m.data, rows))
    rank = np.arange(order.size, dtype=np.int64) - np.repeat(m.indptr[:-1].astype(np.int64), counts)
    keep = order[rank < k]
    out = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
    out.sort_indices()
    return out


def cooccurrence_graph(
    users: np.ndarray, items: np.ndarray, n_items: int, k: int, min_count: int = 2
) -> sp.csr_matrix:
    """The top-``k`` co-interaction graph (float32 CSR, directed, unnormalised).

    Row ``i`` holds the (at most ``k``) items ``j ≠ i`` with the most users in common with
    ``i``, among those with at least ``min_count`` common users; the weight is that number.
    Ties at the cut are broken towards the lower item id.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    c = cooccurrence_counts(users, items, n_items)
    c.data[c.data < min_count] = 0
    c.eliminate_zeros()
    return sp.csr_matrix(top_k_per_row(c, int(k)), dtype=np.float32)
