"""The protocol's statistics against direct computations: the paired t-test, Holm's correction,
the hierarchical bootstrap; and the one aggregation rule (mean ± std over seeds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from egra.experiments.aggregate import mean_std, summarize
from egra.experiments.stats import hierarchical_bootstrap, holm, seed_test, wilcoxon_floor


def test_seed_test_is_scipys_paired_t_test():
    a = np.array([0.30, 0.32, 0.31, 0.35, 0.33])
    b = a - np.array([0.01, 0.02, 0.015, 0.03, 0.01])
    t = seed_test(a, b)
    assert t["n"] == 5 and t["mean_diff"] == pytest.approx(0.017)
    assert t["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert t["rel_diff"] == pytest.approx(0.017 / b.mean())
    # Undefined, not 0 or 1: no variance of the difference, or a single seed.
    assert math.isnan(seed_test(a, a)["p"]) and math.isnan(seed_test(a, a + 0.01)["p"])
    assert math.isnan(seed_test([0.3], [0.2])["p"])
    with pytest.raises(ValueError):
        seed_test([0.1, 0.2], [0.1])


def test_wilcoxon_floor_with_five_seeds():
    assert wilcoxon_floor(5) == 0.0625
    assert wilcoxon_floor(5) == pytest.approx(sps.wilcoxon([1, 2, 3, 4, 5]).pvalue)


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005 (×4) 0.01 (×3) 0.03 (×2) 0.04 (×1), running maximum, capped at 1
    expected = [0.03, 0.06, 0.06, 0.02, float("nan")]
    assert holm(p)[:4] == pytest.approx(expected[:4])
    assert math.isnan(holm(p)[4])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def _bootstrap_by_hand(diffs, samples, seed, level):
    rng = np.random.default_rng(seed)
    stat = []
    for _ in range(samples):
        picked = rng.integers(len(diffs), size=len(diffs))
        means = []
        for s in picked:
            users = rng.integers(len(diffs[s]), size=len(diffs[s]))
            means.append(np.mean([diffs[s][u] for u in users]))
        stat.append(np.mean(means))
    a = (1 - level) / 2
    return np.quantile(stat, [a, 1 - a])


def test_hierarchical_bootstrap_matches_the_direct_computation():
    rng = np.random.default_rng(3)
    diffs = [rng.normal(0.01 * s, 0.1, size=n) for s, n in enumerate([30, 40, 25])]
    got = hierarchical_bootstrap(diffs, samples=300, seed=7, level=0.9)
    lo, hi = _bootstrap_by_hand(diffs, 300, 7, 0.9)
    assert got["ci_low"] == pytest.approx(lo) and got["ci_high"] == pytest.approx(hi)
    assert got["estimate"] == pytest.approx(np.mean([d.mean() for d in diffs]))
    assert got["ci_low"] < got["estimate"] < got["ci_high"]


def test_hierarchical_bootstrap_sees_seed_to_seed_variance():
    """Users pooled across seeds would give a narrow interval; seeds that disagree widen it."""
    rng = np.random.default_rng(0)
    agree = [rng.normal(0.02, 0.05, 500) for _ in range(5)]
    disagree = [rng.normal(m, 0.05, 500) for m in (-0.04, 0.08, -0.03, 0.07, 0.02)]
    w_agree = np.diff([hierarchical_bootstrap(agree, 400)[k] for k in ("ci_low", "ci_high")])[0]
    w_dis = np.diff([hierarchical_bootstrap(disagree, 400)[k] for k in ("ci_low", "ci_high")])[0]
    assert w_dis > 5 * w_agree
    same = hierarchical_bootstrap([np.full(10, 0.01)] * 3, 50)
    assert same["ci_low"] == pytest.approx(0.01) and same["ci_high"] == pytest.approx(0.01)
    with pytest.raises(ValueError):
        hierarchical_bootstrap([np.array([])], 10)


def test_one_rule_for_mean_and_std():
    assert mean_std([0.2, 0.4]) == pytest.approx((0.3, math.sqrt(0.02), 2))
    mean, std, n = mean_std([0.2])
    assert mean == 0.2 and math.isnan(std) and n == 1  # never 0 for one seed
    assert math.isnan(mean_std([])[0]) and mean_std([None, "x"])[2] == 0
    frame = pd.DataFrame(
        {
            "job": ["0", "1", "2", "3"],
            "status": ["ok", "collapsed", "failed", "ok"],
            "model": ["a", "a", "a", "b"],
            "seed": [0, 1, 2, 0],
            "test/Recall@20": [0.2, 0.1, None, 0.3],
        }
    )
    frame.attrs["override_columns"] = ["model"]
    s = summarize(frame, ["test/Recall@20"])
    # A collapsed run counts (it is an outcome of its config); a failed one does not.
    assert list(s["seeds"]) == [2, 1] and list(s["runs"]) == ["1 ok, 1 collapsed, 1 failed", "1 ok"]
    assert s["test/Recall@20 mean"].tolist() == pytest.approx([0.15, 0.3])
    assert math.isnan(s["test/Recall@20 std"].iloc[1])
