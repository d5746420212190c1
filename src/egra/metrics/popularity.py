"""Item popularity groups, for Recall/NDCG per popularity group (long-tail analysis).

Items are sorted by training interaction count (ascending, ties by item id) and cut into
``n_groups`` consecutive groups holding (as near as possible) equal shares of all training
interactions: group 0 has many rarely-seen items, the last group few very popular ones.

Per-group metrics use the full ranking over all items; for group ``g`` only the held-out
items in ``g`` are relevant (``T_u ∩ G_g``), and a user is evaluated for ``g`` iff that set is
non-empty. :func:`group_truth` filters the truth pairs accordingly; feed its output to
:func:`egra.metrics.ranking.chunk_metric_sums` together with the unchanged top-K lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from egra.metrics.ranking import means_from_sums, rank_metric_sums


def popularity_groups(item_counts: np.ndarray, n_groups: int = 5) -> np.ndarray:
    """Popularity group (int64, 0 = least popular) of every item.

    Cut points: with ``P[b]`` the interaction total of the ``b`` least popular items (in the
    sorted order) and ``T = P[n]``, boundary ``g`` is the ``b`` whose ``P[b]`` is nearest to
    ``g·T/n_groups`` (the smaller ``b`` on a tie). Boundaries are then made strictly increasing
    so that every group is non-empty. Items with zero interactions always fall in group 0,
    which requires at least ``n_groups - 1`` items with a non-zero count.

    Raises ``ValueError`` if ``n_items < n_groups``, a count is negative, or there are too few
    items with interactions to fill groups ``1..n_groups-1``.
    """
    counts = np.asarray(item_counts)
    if counts.ndim != 1:
        raise ValueError(f"item_counts must be 1-D, got shape {counts.shape}")
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    n = counts.shape[0]
    if n < n_groups:
        raise ValueError(f"cannot cut {n} items into {n_groups} non-empty groups")
    if n and counts.min() < 0:
        raise ValueError("item_counts must be non-negative")
    n_zero = int((counts == 0).sum())
    if n_groups > 1 and n - n_zero < n_groups - 1:
        raise ValueError(
            f"only {n - n_zero} items have training interactions; {n_groups - 1} are needed "
            f"to fill groups 1..{n_groups - 1} (items without interactions all go to group 0)"
        )

    order = np.argsort(counts, kind="stable")  # ascending count, ties by item id
    prefix = np.concatenate(([0.0], np.cumsum(counts[order], dtype=np.float64)))
    total = prefix[-1]

    bounds = np.empty(n_groups + 1, dtype=np.int64)
    bounds[0], bounds[-1] = 0, n
    for g in range(1, n_groups):
        target = g * total / n_groups
        hi = int(np.searchsorted(prefix, target, side="left"))  # first b with P[b] >= target
        lo = max(hi - 1, 0)
        hi = min(hi, n)
        bounds[g] = lo if target - prefix[lo] <= prefix[hi] - target else hi
    # Strictly increasing, group 0 holds every zero-count item, the last groups fit in n items.
    if n_groups > 1:
        bounds[1] = max(bounds[1], n_zero, 1)
    for g in range(2, n_groups):
        bounds[g] = max(bounds[g], bounds[g - 1] + 1)
    for g in range(n_groups - 1, 0, -1):
        bounds[g] = min(bounds[g], bounds[g + 1] - 1)

    groups = np.empty(n, dtype=np.int64)
    for g in range(n_groups):
        groups[order[bounds[g] : bounds[g + 1]]] = g
    return groups


def group_truth(
    truth_rows: Tensor, truth_items: Tensor, item_group: Tensor | np.ndarray, g: int
) -> tuple[Tensor, Tensor]:
    """The truth pairs whose item is in popularity group ``g`` (rows keep their indices)."""
    rows = torch.as_tensor(truth_rows)
    items = torch.as_tensor(truth_items)
    groups = torch.as_tensor(item_group).to(items.device)
    keep = groups[items.long()] == g
    return rows[keep.to(rows.device)], items[keep]


def mostpop_metrics(
    train_users: np.ndarray,
    train_items: np.ndarray,
    eval_users: np.ndarray,
    eval_items: np.ndarray,
    n_items: int,
    ks: Sequence[int] = (20,),
) -> dict[str, float]:
    """Metrics of MostPop (rank items by train interactions) on one held-out split.

    Same protocol as the models': each user's train items are masked, ties go to the
    lower item id, metrics are macro averages over users with held-out items. No score
    matrix: a held-out item's rank is its global popularity rank minus the user's masked
    items ranked above it, so the cost is O((train + held-out) log) for any catalog.
    """
    counts = np.bincount(np.asarray(train_items), minlength=n_items)
    order = np.lexsort((np.arange(n_items), -counts))  # most popular first, ties by id
    grank = np.empty(n_items, dtype=np.int64)
    grank[order] = np.arange(n_items)
    tu, ti = np.asarray(train_users, dtype=np.int64), np.asarray(train_items, dtype=np.int64)
    train_keys = np.unique(tu * n_items + grank[ti])  # repeated pairs are masked once
    eu, ei = np.asarray(eval_users, dtype=np.int64), np.asarray(eval_items, dtype=np.int64)
    pairs = np.unique(eu * n_items + ei)  # distinct held-out pairs, as the models count them
    eu, ei = pairs // n_items, pairs % n_items
    ahead = np.searchsorted(train_keys, eu * n_items + grank[ei]) - np.searchsorted(train_keys, eu * n_items)
    ranks = grank[ei] - ahead
    # A held-out item the user also has in train is masked like the others: never a hit.
    ranks[np.isin(pairs, tu * n_items + ti)] = n_items
    users, rows = np.unique(eu, return_inverse=True)
    sums, n_users = rank_metric_sums(torch.from_numpy(rows), torch.from_numpy(ranks), len(users), ks)
    return means_from_sums(sums, n_users)
