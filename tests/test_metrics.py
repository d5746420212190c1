"""Ranking metrics against hand-computed values and a slow reference; popularity groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from egra.metrics import (
    DEFAULT_KS,
    METRICS,
    chunk_metric_sums,
    count_relevant,
    group_truth,
    hit_matrix,
    means_from_sums,
    merge_sums,
    metric_sums,
    popularity_groups,
    ranking_metrics,
)

L3 = math.log2(3)
L5 = math.log2(5)
L6 = math.log2(6)

# ---------------------------------------------------------------------------------------------
# Hand-computed example: 5 users with top-5 lists over 20 items, plus a row without truth.
# ---------------------------------------------------------------------------------------------
N_ITEMS = 20
TOPK = torch.tensor(
    [
        [1, 2, 3, 4, 5],  # A: T = {2, 5}, hits at ranks 2 and 5
        [10, 11, 12, 13, 14],  # B: |T| = 7 > K, hits at ranks 1 and 3
        [0, 6, 7, 8, 9],  # C: T = {3}, no hit
        [4, 3, 2, 1, 0],  # D: |T| = 6, hits at every rank
        [7, 8, 9, 10, 11],  # E: T = {7}, one hit at rank 1
        [0, 1, 2, 3, 4],  # F: no held-out item at all
    ]
)
TRUTH = {
    0: [2, 5],
    1: [10, 12, 15, 16, 17, 18, 19],
    2: [3],
    3: [0, 1, 2, 3, 4, 5],
    4: [7],
}

# EXPECTED[user][K] = (Recall, NDCG, Precision, MAP, Hit), written out by hand.
EXPECTED = {
    0: {
        1: (0, 0, 0, 0, 0),
        2: (1 / 2, (1 / L3) / (1 + 1 / L3), 1 / 2, (1 / 2) * (1 / 2), 1),
        3: (1 / 2, (1 / L3) / (1 + 1 / L3), 1 / 3, (1 / 2) * (1 / 2), 1),
        5: (1, (1 / L3 + 1 / L6) / (1 + 1 / L3), 2 / 5, (1 / 2) * (1 / 2 + 2 / 5), 1),
    },
    1: {
        1: (1 / 7, 1, 1, 1, 1),
        2: (1 / 7, 1 / (1 + 1 / L3), 1 / 2, (1 / 2) * 1, 1),
        3: (2 / 7, (1 + 1 / 2) / (1 + 1 / L3 + 1 / 2), 2 / 3, (1 / 3) * (1 + 2 / 3), 1),
        5: (2 / 7, (1 + 1 / 2) / (1 + 1 / L3 + 1 / 2 + 1 / L5 + 1 / L6), 2 / 5, (1 / 5) * (1 + 2 / 3), 1),
    },
    2: {k: (0, 0, 0, 0, 0) for k in (1, 2, 3, 5)},
    3: {
        1: (1 / 6, 1, 1, 1, 1),
        2: (2 / 6, 1, 1, 1, 1),
        3: (3 / 6, 1, 1, 1, 1),
        5: (5 / 6, 1, 1, 1, 1),
    },
    4: {
        1: (1, 1, 1, 1, 1),
        2: (1, 1, 1 / 2, 1, 1),
        3: (1, 1, 1 / 3, 1, 1),
        5: (1, 1, 1 / 5, 1, 1),
    },
}
KS = (1, 2, 3, 5)
ORDER = ("Recall", "NDCG", "Precision", "MAP", "Hit")


def _truth_pairs(truth: dict[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [r for r, items in truth.items() for _ in items]
    items = [i for its in truth.values() for i in its]
    return torch.tensor(rows), torch.tensor(items)


def test_metric_names():
    assert METRICS == ORDER
    assert DEFAULT_KS == (5, 10, 20, 50)


def test_hand_computed_per_user():
    rows, items = _truth_pairs(TRUTH)
    hits = hit_matrix(TOPK, rows, items, N_ITEMS)
    assert hits.dtype == torch.bool
    assert hits[:5].int().tolist() == [
        [0, 1, 0, 0, 1],
        [1, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
    ]
    assert not hits[5].any()
    n_rel = count_relevant(rows, items, 6, N_ITEMS)
    assert n_rel.tolist() == [2, 7, 1, 6, 1, 0]
    for u in range(5):
        sums = metric_sums(hits[u : u + 1], n_rel[u : u + 1], KS)
        assert set(sums) == {f"{n}@{k}" for n in ORDER for k in KS}
        for k in KS:
            for name, want in zip(ORDER, EXPECTED[u][k]):
                got = sums[f"{name}@{k}"]
                assert got.dtype == torch.float64 and got.dim() == 0
                assert got.item() == pytest.approx(want, abs=1e-12), (u, name, k)


def test_hand_computed_means_exclude_users_without_truth():
    rows, items = _truth_pairs(TRUTH)
    got = ranking_metrics(TOPK, rows, items, N_ITEMS, KS)
    for k in KS:
        for j, name in enumerate(ORDER):
            want = sum(EXPECTED[u][k][j] for u in range(5)) / 5  # row F is not counted
            assert got[f"{name}@{k}"] == pytest.approx(want, abs=1e-12)
    sums, n_users = chunk_metric_sums(TOPK, rows, items, N_ITEMS, KS)
    assert n_users == 5


def test_duplicate_truth_pairs_are_deduplicated():
    rows, items = _truth_pairs(TRUTH)
    rows2 = torch.cat([rows, rows[:3], torch.tensor([3, 3])])
    items2 = torch.cat([items, items[:3], torch.tensor([0, 0])])
    assert torch.equal(hit_matrix(TOPK, rows2, items2, N_ITEMS), hit_matrix(TOPK, rows, items, N_ITEMS))
    assert count_relevant(rows2, items2, 6, N_ITEMS).tolist() == [2, 7, 1, 6, 1, 0]
    assert ranking_metrics(TOPK, rows2, items2, N_ITEMS, KS) == ranking_metrics(
        TOPK, rows, items, N_ITEMS, KS
    )


def test_hit_matrix_against_sets():
    g = torch.Generator().manual_seed(0)
    b, k, n_items = 37, 12, 60
    topk = torch.stack([torch.randperm(n_items, generator=g)[:k] for _ in range(b)])
    n_pairs = 300
    rows = torch.randint(0, b, (n_pairs,), generator=g)
    items = torch.randint(0, n_items, (n_pairs,), generator=g)  # unsorted, with duplicates
    hits = hit_matrix(topk, rows, items, n_items)
    sets = [set() for _ in range(b)]
    for r, i in zip(rows.tolist(), items.tolist()):
        sets[r].add(i)
    want = [[i in sets[r] for i in topk[r].tolist()] for r in range(b)]
    assert hits.tolist() == want
    assert count_relevant(rows, items, b, n_items).tolist() == [len(s) for s in sets]


def test_hit_matrix_edge_cases():
    topk = torch.tensor([[0, 1], [2, 3]])
    empty = torch.zeros(0, dtype=torch.long)
    assert not hit_matrix(topk, empty, empty, 4).any()
    # item n_items-1 of row 0 must not be confused with item 0 of row 1
    assert hit_matrix(torch.tensor([[3], [0]]), torch.tensor([0]), torch.tensor([3]), 4).tolist() == [
        [True],
        [False],
    ]
    with pytest.raises(ValueError):
        hit_matrix(topk, torch.tensor([2]), torch.tensor([0]), 4)  # row out of range
    with pytest.raises(ValueError):
        hit_matrix(topk, torch.tensor([0]), torch.tensor([4]), 4)  # item out of range
    with pytest.raises(ValueError):
        hit_matrix(torch.tensor([[0, 4]]), torch.tensor([0]), torch.tensor([0]), 4)


def test_metric_sums_validation():
    hits = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="n_relevant > 0"):
        metric_sums(hits, torch.tensor([1, 0]), (1, 2))
    with pytest.raises(ValueError):
        metric_sums(hits, torch.tensor([1, 1]), (5,))  # K wider than hits
    with pytest.raises(ValueError):
        metric_sums(hits, torch.tensor([1, 1, 1]), (1,))


def _reference_user(ranked: list[int], relevant: set[int], k: int) -> dict[str, float]:
    """Slow, literal MMRec formulas for one user."""
    hit = [1 if ranked[j] in relevant else 0 for j in range(k)]
    n_hit = sum(hit)
    dcg = sum(hit[j] / math.log2(j + 2) for j in range(k))
    idcg = sum(1 / math.log2(j + 2) for j in range(min(len(relevant), k)))
    ap = 0.0
    for j in range(k):
        if hit[j]:
            ap += sum(hit[: j + 1]) / (j + 1)
    return {
        "Recall": n_hit / len(relevant),
        "NDCG": dcg / idcg,
        "Precision": n_hit / k,
        "MAP": ap / min(len(relevant), k),
        "Hit": float(n_hit > 0),
    }


def test_metric_sums_against_slow_reference():
    rng = np.random.default_rng(1)
    b, kmax, n_items = 300, 50, 120
    topk = torch.from_numpy(np.stack([rng.permutation(n_items)[:kmax] for _ in range(b)]))
    truth = {}
    for u in range(b):
        size = int(rng.choice([1, 2, 3, 7, 30, 60, 100]))
        # bias truth towards the top of the ranking so that many hits occur
        pool = np.concatenate([topk[u, :20].numpy(), rng.permutation(n_items)])
        truth[u] = sorted(set(pool[rng.permutation(len(pool))[: size * 2]].tolist()))[:size]
    rows, items = _truth_pairs(truth)
    ks = (1, 3, 5, 10, 20, 37, 50)
    sums, n_users = chunk_metric_sums(topk, rows, items, n_items, ks)
    assert n_users == b
    for k in ks:
        ref = {name: 0.0 for name in ORDER}
        for u in range(b):
            for name, v in _reference_user(topk[u].tolist(), set(truth[u]), k).items():
                ref[name] += v
        for name in ORDER:
            assert sums[f"{name}@{k}"].item() == pytest.approx(ref[name], rel=1e-10, abs=1e-10), (name, k)


def test_chunked_accumulation_matches_one_chunk():
    rng = np.random.default_rng(2)
    b, kmax, n_items = 100, 20, 50
    topk = torch.from_numpy(np.stack([rng.permutation(n_items)[:kmax] for _ in range(b)]))
    rows = torch.from_numpy(rng.integers(0, b, 400))
    items = torch.from_numpy(rng.integers(0, n_items, 400))
    rows[rows == 7] = 8  # user 7 has no truth and is skipped
    whole = ranking_metrics(topk, rows, items, n_items, (5, 10, 20))
    acc: dict = {}
    total = 0
    for start in range(0, b, 33):
        sel = (rows >= start) & (rows < start + 33)
        s, n = chunk_metric_sums(
            topk[start : start + 33], rows[sel] - start, items[sel], n_items, (5, 10, 20)
        )
        merge_sums(acc, s)
        total += n
    assert total == len(set(rows.tolist())) and 7 not in set(rows.tolist())
    got = means_from_sums(acc, total)
    assert got.keys() == whole.keys()
    for key in whole:
        assert got[key] == pytest.approx(whole[key], rel=1e-12)
    assert all(math.isnan(v) for v in means_from_sums(acc, 0).values())


def test_ranking_metrics_no_truth_is_nan():
    empty = torch.zeros(0, dtype=torch.long)
    out = ranking_metrics(torch.tensor([[0, 1]]), empty, empty, 3, (1, 2))
    assert len(out) == 10 and all(math.isnan(v) for v in out.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rows, items = _truth_pairs(TRUTH)
    cpu = ranking_metrics(TOPK, rows, items, N_ITEMS, KS)
    gpu = ranking_metrics(TOPK.cuda(), rows, items.cuda(), N_ITEMS, KS)
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Popularity groups
# ---------------------------------------------------------------------------------------------


def test_popularity_groups_hand_example():
    # sorted (count, id): (0,2) (1,1) (1,4) (2,3) (2,6) (2,7) (4,0) (8,5); prefix totals
    # 0,0,1,2,4,6,8,12,20; targets 20/3 ≈ 6.67 -> after 5 items (6), 40/3 ≈ 13.3 -> after 7 (12).
    counts = np.array([4, 1, 0, 2, 1, 8, 2, 2])
    groups = popularity_groups(counts, 3)
    assert groups.tolist() == [1, 0, 0, 0, 0, 2, 0, 1]  # ties at count 2: ids 3, 6 before 7
    assert groups.dtype == np.int64


def test_popularity_groups_zero_counts_and_forced_nonempty():
    # zero-count items always in group 0
    assert popularity_groups(np.array([0, 0, 0, 5, 5, 5, 5]), 3).tolist() == [0, 0, 0, 0, 1, 1, 2]
    # nearest cuts would leave group 1 empty; boundaries are pushed apart
    assert popularity_groups(np.array([0, 0, 0, 0, 1, 100]), 3).tolist() == [0, 0, 0, 0, 1, 2]
    assert popularity_groups(np.array([1, 1, 1000, 1, 1]), 5).tolist() == [0, 1, 4, 2, 3]
    assert popularity_groups(np.array([3, 1, 2]), 1).tolist() == [0, 0, 0]


def test_popularity_groups_errors():
    with pytest.raises(ValueError):
        popularity_groups(np.array([1, 2, 3]), 5)  # fewer items than groups
    with pytest.raises(ValueError):
        popularity_groups(np.array([0, 0, 0, 0, 1, 100]), 4)  # 2 non-zero items for 3 upper groups
    with pytest.raises(ValueError):
        popularity_groups(np.array([1, -1, 3]), 2)
    with pytest.raises(ValueError):
        popularity_groups(np.zeros(10, dtype=np.int64), 2)


def test_popularity_groups_long_tail():
    rng = np.random.default_rng(3)
    counts = np.minimum(rng.zipf(1.8, size=5000), 400)
    counts[:50] = 0
    n_groups = 5
    groups = popularity_groups(counts, n_groups)
    assert groups.shape == counts.shape
    assert set(groups.tolist()) == set(range(n_groups))  # partition into non-empty groups
    assert (groups[counts == 0] == 0).all()
    totals = np.array([counts[groups == g].sum() for g in range(n_groups)])
    assert totals.sum() == counts.sum()
    # popularity increases with the group id; sizes shrink (long tail)
    for g in range(n_groups - 1):
        assert counts[groups == g].max() <= counts[groups == g + 1].min()
        assert (groups == g).sum() >= (groups == g + 1).sum()
    # each group total is within one item's count of the ideal share
    ideal = counts.sum() / n_groups
    cum_err = np.abs(np.cumsum(totals)[:-1] - ideal * np.arange(1, n_groups))
    assert (cum_err <= counts.max() / 2 + 1e-9).all()
    # deterministic
    assert np.array_equal(popularity_groups(counts.copy(), n_groups), groups)


def test_group_truth_filters_pairs():
    item_group = torch.tensor([0, 1, 1, 2, 0, 2])
    rows = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    items = torch.tensor([0, 3, 1, 2, 5, 4, 3])
    r1, i1 = group_truth(rows, items, item_group, 1)
    assert r1.tolist() == [1, 1] and i1.tolist() == [1, 2]
    r2, i2 = group_truth(rows, items, item_group.numpy(), 2)
    assert r2.tolist() == [0, 2, 3] and i2.tolist() == [3, 5, 3]
    r0, i0 = group_truth(rows, items, item_group, 0)
    assert r0.tolist() == [0, 3] and i0.tolist() == [0, 4]
    # per-group evaluation: full ranking, only group items are relevant
    topk = torch.tensor([[3, 0, 1], [0, 1, 2], [5, 4, 3], [4, 0, 3]])
    sums, n_users = chunk_metric_sums(topk, r2, i2, 6, (1, 3))
    assert n_users == 3  # users 0, 2, 3 hold a group-2 item
    # user 0: T∩G2={3}, hit at 1; user 2: {5}, hit at 1; user 3: {3}, hit at 3
    assert sums["Recall@1"].item() == pytest.approx(2)
    assert sums["Recall@3"].item() == pytest.approx(3)
    assert sums["NDCG@3"].item() == pytest.approx(1 + 1 + 1 / 2)


# -- ranks of held-out items instead of top-K lists (what evaluation uses) -------------------


def test_truth_ranks_hand_example_with_ties_and_mask():
    from egra.metrics import truth_ranks

    inf = float("-inf")
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, inf], [0.2, 0.2, 0.2, inf, 0.3]])
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    items = torch.tensor([2, 0, 3, 1, 3, 4])
    # row 0: order 1, 0, 2 (tie 0.5 broken by id), 3, 4; row 1: 4, 0, 1, 2, 3 (masked last)
    assert truth_ranks(scores, rows, items).tolist() == [2, 1, 3, 2, 4, 0]


@pytest.mark.parametrize("columns", [5, 12, 16384])
@pytest.mark.parametrize("use_numpy", [True, False])
def test_count_ahead_paths_agree(use_numpy, columns, monkeypatch):
    """Both kernels, whole blocks and selected rows, in column slabs of any width."""
    from egra.metrics import ranking
    from egra.metrics.ranking import _count_ahead

    monkeypatch.setattr(ranking, "COUNT_COLUMNS", columns)
    g = torch.Generator().manual_seed(3)
    block = torch.randint(0, 5, (30, 12), generator=g).float()  # many ties
    items = torch.randint(0, 12, (30,), generator=g)
    values = block[torch.arange(30), items]
    slow = torch.tensor(
        [int((block[r] > values[r]).sum() + (block[r, : items[r]] == values[r]).sum()) for r in range(30)]
    )
    assert torch.equal(_count_ahead(block, values, items, use_numpy=use_numpy), slow)
    rows = torch.tensor([29, 3, 3, 0, 17])
    got = _count_ahead(block, values[rows], items[rows], use_numpy=use_numpy, rows=rows)
    assert torch.equal(got, slow[rows])


@pytest.mark.parametrize("columns", [7, 16384])
def test_rank_metric_sums_equal_topk_metric_sums(columns, monkeypatch):
    """Random scores, masked items, several truth items per row: identical sums."""
    from egra.metrics import rank_metric_sums, ranking, truth_ranks

    monkeypatch.setattr(ranking, "COUNT_COLUMNS", columns)

    g = torch.Generator().manual_seed(0)
    b, n_items, ks = 40, 90, (1, 5, 20, 50)
    scores = torch.randn(b, n_items, generator=g)
    masked = torch.rand(b, n_items, generator=g) < 0.3
    scores[masked] = float("-inf")
    truth = (torch.rand(b, n_items, generator=g) < 0.08) & ~masked
    truth[5] = False  # a row without held-out items is left out
    rows, items = truth.nonzero(as_tuple=True)
    topk = torch.topk(scores, 50, dim=1).indices
    want, n_want = chunk_metric_sums(topk, rows, items, n_items, ks)
    got, n_got = rank_metric_sums(rows, truth_ranks(scores, rows, items), b, ks)
    assert n_got == n_want == b - 1
    assert got.keys() == want.keys()
    for key in want:
        assert float(got[key]) == pytest.approx(float(want[key]), abs=1e-12), key


def test_truth_ranks_rejects_nan_scores():
    from egra.metrics import truth_ranks

    scores = torch.tensor([[0.1, float("nan")]])
    with pytest.raises(FloatingPointError, match="NaN"):
        truth_ranks(scores, torch.tensor([0]), torch.tensor([1]))
