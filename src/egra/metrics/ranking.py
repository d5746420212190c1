"""Top-K ranking metrics with MMRec's exact formulas (full ranking, macro average over users).

The evaluation loop works chunk by chunk: for ``B`` users it has ``topk`` (``[B, K]`` item
ids in rank order) and the held-out items of those users as COO pairs ``(row, item)`` with
``row`` in ``0..B-1``. Per chunk it computes per-metric *sums* over users
(:func:`metric_sums` / :func:`chunk_metric_sums`), accumulates them with
:func:`merge_sums`, and divides by the number of evaluated users at the end
(:func:`means_from_sums`).

Duplicated truth pairs: MMRec counts ``|T_u|`` by rows, so a repeated ``(u, i)`` row would
count twice there. Here truth pairs are **deduplicated**: a hit counts once and ``|T_u|`` is
the number of *distinct* relevant items (:func:`count_relevant`). For data without duplicate
pairs (MMRec's released data have none) both conventions agree.

Every ``topk`` row must hold distinct item ids (``torch.topk`` guarantees this); a repeated
item would be counted as several hits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping

import numpy as np
import torch
from torch import Tensor

METRICS = ("Recall", "NDCG", "Precision", "MAP", "Hit")
DEFAULT_KS = (5, 10, 20, 50)


def _check_range(name: str, t: Tensor, upper: int) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{int(t.min())}, {int(t.max())}]")


def truth_keys(truth_rows: Tensor, truth_items: Tensor, n_rows: int, n_items: int) -> Tensor:
    """Sorted, deduplicated keys ``row * n_items + item`` (int64) of the truth pairs."""
    rows = torch.as_tensor(truth_rows).long().reshape(-1)
    items = torch.as_tensor(truth_items).long().reshape(-1).to(rows.device)
    if rows.shape != items.shape:
        raise ValueError(f"truth_rows and truth_items differ in length: {rows.numel()} vs {items.numel()}")
    _check_range("truth_rows", rows, n_rows)
    _check_range("truth_items", items, n_items)
    return torch.unique(rows * n_items + items, sorted=True)


def count_relevant(truth_rows: Tensor, truth_items: Tensor, n_rows: int, n_items: int) -> Tensor:
    """``|T_u|`` for each of ``n_rows`` rows: the number of *distinct* truth items (int64 ``[n_rows]``)."""
    keys = truth_keys(truth_rows, truth_items, n_rows, n_items)
    return torch.bincount(keys // n_items, minlength=n_rows)


def hit_matrix(topk: Tensor, truth_rows: Tensor, truth_items: Tensor, n_items: int) -> Tensor:
    """``hit[b, j]`` = item ``topk[b, j]`` is a relevant item of row ``b`` (bool ``[B, K]``).

    Vectorised: the truth pairs become sorted unique keys ``row * n_items + item`` and every
    top-K entry is looked up with one ``searchsorted``. Truth pairs may be repeated (they are
    deduplicated); they may be on another device than ``topk`` (moved to ``topk.device``).
    """
    if topk.dim() != 2:
        raise ValueError(f"topk must be [B, K], got shape {tuple(topk.shape)}")
    b, k = topk.shape
    topk = topk.long()
    _check_range("topk", topk, n_items)
    keys = truth_keys(
        torch.as_tensor(truth_rows).to(topk.device), torch.as_tensor(truth_items).to(topk.device), b, n_items
    )
    if keys.numel() == 0:
        return torch.zeros((b, k), dtype=torch.bool, device=topk.device)
    query = torch.arange(b, device=topk.device).unsqueeze(1) * n_items + topk
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[pos] == query


def metric_sums(hits: Tensor, n_relevant: Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, Tensor]:
    """Sums over the ``B`` users of a chunk of every metric at every cut-off (float64 scalars).

    The sums of :func:`metric_rows`.
    """
    return {key: value.sum() for key, value in metric_rows(hits, n_relevant, ks).items()}


def metric_rows(hits: Tensor, n_relevant: Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, Tensor]:
    """Every metric at every cut-off for each of the ``B`` users of a chunk (float64 ``[B]``).

    Keys are ``f"{name}@{k}"`` for ``name`` in :data:`METRICS` and ``k`` in ``ks``;
    ``hits`` is ``[B, K]`` bool in rank order with ``K >= max(ks)``; ``n_relevant`` is
    ``|T_u| > 0`` per user. MMRec's formulas, with ``h_j`` the hit at rank ``j``:

    - Recall@K = ``Σ_{j≤K} h_j / |T_u|``; Precision@K = ``Σ_{j≤K} h_j / K``;
    - NDCG@K = DCG/IDCG, ``DCG = Σ_{j≤K} h_j / log2(j+1)``,
      ``IDCG = Σ_{j=1}^{min(|T_u|,K)} 1 / log2(j+1)``;
    - MAP@K = ``(1 / min(|T_u|,K)) Σ_{j≤K} h_j · Precision@j``;
    - Hit@K = 1 if any ``h_j = 1`` for ``j ≤ K``.
    """
    ks = tuple(int(k) for k in ks)
    if hits.dim() != 2:
        raise ValueError(f"hits must be [B, K], got shape {tuple(hits.shape)}")
    b, kmax = hits.shape
    if not ks or min(ks) < 1 or max(ks) > kmax:
        raise ValueError(f"every cut-off must be in 1..{kmax} (the width of hits), got {ks}")
    dev = hits.device
    n_rel = torch.as_tensor(n_relevant).to(device=dev, dtype=torch.float64).reshape(-1)
    if n_rel.numel() != b:
        raise ValueError(f"n_relevant has {n_rel.numel()} entries for {b} users")
    if b and bool((n_rel <= 0).any()):
        raise ValueError("every user must have n_relevant > 0; leave users without held-out items out")

    h = hits.to(torch.float64)
    rank = torch.arange(1, kmax + 1, device=dev, dtype=torch.float64)
    disc = 1.0 / torch.log2(rank + 1.0)
    n_hits = h.cumsum(1)  # hits within the top j
    dcg = (h * disc).cumsum(1)
    idcg = disc.cumsum(0)  # idcg[m - 1] = ideal DCG of m relevant items
    ap = (h * (n_hits / rank)).cumsum(1)

    out: dict[str, Tensor] = {}
    for k in ks:
        hk = n_hits[:, k - 1]
        m = torch.clamp(n_rel, max=float(k))  # min(|T_u|, K)
        per_user = {
            "Recall": hk / n_rel,
            "NDCG": dcg[:, k - 1] / idcg[m.long() - 1],
            "Precision": hk / k,
            "MAP": ap[:, k - 1] / m,
            "Hit": (hk > 0).to(torch.float64),
        }
        for name in METRICS:
            out[f"{name}@{k}"] = per_user[name]
    return out


def chunk_metric_sums(
    topk: Tensor, truth_rows: Tensor, truth_items: Tensor, n_items: int, ks: Iterable[int] = DEFAULT_KS
) -> tuple[dict[str, Tensor], int]:
    """:func:`metric_sums` for one chunk straight from the truth pairs.

    Returns ``(sums, n_users)`` where ``n_users`` counts the rows with at least one (distinct)
    relevant item; the other rows are left out of the sums, as in MMRec.
    """
    b = topk.shape[0]
    hits = hit_matrix(topk, truth_rows, truth_items, n_items)
    n_rel = count_relevant(
        torch.as_tensor(truth_rows).to(topk.device), torch.as_tensor(truth_items).to(topk.device), b, n_items
    )
    keep = n_rel > 0
    return metric_sums(hits[keep], n_rel[keep], ks), int(keep.sum())


def truth_ranks(scores: Tensor, truth_rows: Tensor, truth_items: Tensor) -> Tensor:
    """0-based rank of each truth pair's item within its row of ``scores`` (int64 ``[P]``).

    ``rank = #{j : s_j > s_t} + #{j < t : s_j = s_t}``: descending by score, ties broken
    by item id. Position ``rank`` of the row's full ranking holds the item, so the top-K
    hits follow from the ranks alone (:func:`rank_metric_sums`) without a top-K selection:
    one comparison pass over a row per held-out item instead of a partial sort of every
    row. Masked items must already be ``-inf``. Pairs must be distinct.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, I], got shape {tuple(scores.shape)}")
    b, n_items = scores.shape
    rows = torch.as_tensor(truth_rows).long().reshape(-1).to(scores.device)
    items = torch.as_tensor(truth_items).long().reshape(-1).to(scores.device)
    _check_range("truth_rows", rows, b)
    _check_range("truth_items", items, n_items)
    ranks = torch.empty_like(rows)
    if rows.numel() == 0:
        return ranks
    thr = scores[rows, items]
    if bool(torch.isnan(thr).any()):
        raise FloatingPointError("NaN scores of held-out items: the model's embeddings are not finite")
    # Pairs grouped by their occurrence within the row: round j handles at most one pair
    # per row, comparing whole rows with one threshold each (a row is gathered only when
    # not every row takes part).
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    first = torch.searchsorted(sorted_rows, sorted_rows, side="left")
    occurrence = torch.empty_like(rows)
    occurrence[order] = torch.arange(rows.numel(), device=rows.device) - first
    for j in range(int(occurrence.max()) + 1):
        sel = (occurrence == j).nonzero().squeeze(1)
        r = rows[sel]
        whole = r.numel() == b and bool((r == torch.arange(b, device=r.device)).all())
        ranks[sel] = _count_ahead(scores, thr[sel], items[sel], rows=None if whole else r)
    return ranks


# Columns compared per pass on the CPU: the comparison buffer stays small (a few MB per
# hundred rows, reused) and a column count below 2**16 lets the row sums run in uint16.
COUNT_COLUMNS = 16384


def _count_ahead(
    block: Tensor, values: Tensor, items: Tensor, use_numpy: bool | None = None, rows: Tensor | None = None
) -> Tensor:
    """Row ``r``: ``#{j : B[r, j] > values[r]} + #{j < items[r] : B[r, j] = values[r]}``.

    ``B`` is ``block``, or ``block[rows]`` when ``rows`` is given (on the CPU those rows
    are read in place, a column slab at a time, rather than copied out whole).
    """
    if use_numpy is None:
        use_numpy = block.device.type == "cpu"
    if not use_numpy:
        b = block if rows is None else block[rows]
        ahead = (b > values[:, None]).sum(1)
        ties = b == values[:, None]
        ties &= torch.arange(b.shape[1], device=b.device)[None, :] < items[:, None]
        return ahead + ties.sum(1)
    # numpy's comparison + narrow row sums run ~3-5x faster than torch's bool kernels at
    # one thread on the CPU, where they are the whole cost of ranking.
    s, v = block.detach().numpy(), values.detach().numpy()[:, None]
    r = None if rows is None else rows.detach().cpu().numpy()
    n, n_cols = v.shape[0], s.shape[1]
    width = min(n_cols, COUNT_COLUMNS)
    buf = np.empty((n, width), dtype=bool)  # one buffer for every pass
    ahead = np.zeros(n, dtype=np.int64)
    equal = np.zeros(n, dtype=np.int64)
    for c0 in range(0, n_cols, width):
        part = s[:, c0 : c0 + width] if r is None else s[r, c0 : c0 + width]
        out = buf[:, : part.shape[1]]
        np.greater(part, v, out=out)
        ahead += out.view(np.uint8).sum(1, dtype=np.uint16)
        np.equal(part, v, out=out)
        equal += out.view(np.uint8).sum(1, dtype=np.uint16)
    for i in np.flatnonzero(equal > 1):  # exact ties besides the item itself: rare
        t = int(items[i])
        row = s[i if r is None else r[i]]
        ahead[i] += int(np.count_nonzero(row[:t] == v[i, 0]))
    return torch.from_numpy(ahead)


def rank_metric_sums(
    truth_rows: Tensor, ranks: Tensor, n_rows: int, ks: Iterable[int] = DEFAULT_KS
) -> tuple[dict[str, Tensor], int]:
    """:func:`chunk_metric_sums` from the ranks of distinct truth pairs (:func:`truth_ranks`).

    ``hit[b, j]`` is set where a truth item of row ``b`` has rank ``j < max(ks)``; the
    rest is :func:`metric_sums` with ``|T_u|`` = the row's number of truth pairs.
    """
    keep, per_row = rank_metric_rows(truth_rows, ranks, n_rows, ks)
    return {key: value.sum() for key, value in per_row.items()}, int(keep.numel())


def rank_metric_rows(
    truth_rows: Tensor, ranks: Tensor, n_rows: int, ks: Iterable[int] = DEFAULT_KS
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-row metrics from truth ranks: (the rows with truth pairs, :func:`metric_rows` of them)."""
    ks = tuple(int(k) for k in ks)
    rows = torch.as_tensor(truth_rows).long().reshape(-1)
    ranks = torch.as_tensor(ranks).long().reshape(-1).to(rows.device)
    kmax = max(ks)
    hits = torch.zeros((n_rows, kmax), dtype=torch.bool, device=rows.device)
    top = ranks < kmax
    hits[rows[top], ranks[top]] = True
    n_rel = torch.bincount(rows, minlength=n_rows)
    keep = torch.nonzero(n_rel > 0).reshape(-1)
    return keep, metric_rows(hits[keep], n_rel[keep], ks)


def merge_sums(acc: MutableMapping[str, Tensor], new: Mapping[str, Tensor]) -> MutableMapping[str, Tensor]:
    """Add ``new`` into ``acc`` in place (missing keys are created) and return ``acc``."""
    for key, value in new.items():
        acc[key] = acc[key] + value if key in acc else value.clone()
    return acc


def means_from_sums(sums: Mapping[str, Tensor], n_users: int) -> dict[str, float]:
    """Macro averages ``sum / n_users`` as floats (NaN for every metric when ``n_users == 0``)."""
    if n_users <= 0:
        return {key: float("nan") for key in sums}
    return {key: float(value) / n_users for key, value in sums.items()}


def ranking_metrics(
    topk: Tensor, truth_rows: Tensor, truth_items: Tensor, n_items: int, ks: Iterable[int] = DEFAULT_KS
) -> dict[str, float]:
    """Means over the users of one chunk that have at least one relevant item.

    Not rounded (MMRec rounds to 4 decimals for display). NaN everywhere if no row has a
    relevant item.
    """
    ks = tuple(ks)
    sums, n_users = chunk_metric_sums(topk, truth_rows, truth_items, n_items, ks)
    return means_from_sums(sums, n_users)
