"""Toy inputs shared by the model tests: a small dataset with features and an item graph."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from egra.graphs import modality_graphs


def toy_data(seed: int = 0, n_users: int = 30, n_items: int = 20) -> dict:
    """Constructor arguments of a recommender: 4 distinct train items per user, 2 modalities."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 4)
    items = np.concatenate([rng.choice(n_items, 4, replace=False) for _ in range(n_users)])
    feats = {"image": rng.standard_normal((n_items, 12)), "text": rng.standard_normal((n_items, 6))}
    return {
        "n_users": n_users,
        "n_items": n_items,
        "train_users": users,
        "train_items": items,
        "features": feats,
    }


def toy_item_graph(n_items: int, seed: int = 1) -> sp.csr_matrix:
    """A symmetric binary item-item graph with ~3 random neighbours per item (no self loops)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_items), 3)
    cols = (rows + rng.integers(1, n_items, size=rows.size)) % n_items
    g = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_items, n_items))
    g.data[:] = 1.0
    return g.maximum(g.T).tocsr()


def toy_graphs(d: dict, k: int = 10) -> dict:
    """MGCN/EGRA's graph argument for ``toy_data`` (what the pipeline's graph stage builds)."""
    return {"modality_graphs": modality_graphs(d["features"], k, device="cpu")}
