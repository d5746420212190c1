"""The statistics of a comparison: paired tests over seeds, Holm's correction, a hierarchical
bootstrap of per-user differences.

The unit of replication is the training seed (and, with generated data that varies with the
seed, the data draw). Users of one seed's test split are not independent replicates of another
seed's, so per-user evidence enters only through :func:`hierarchical_bootstrap`, which resamples
seeds first and users within each drawn seed second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def seed_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Two-sided paired t-test of ``a − b`` over seeds (``a[i]``, ``b[i]``: seed ``i``).

    ``p`` is NaN when it is undefined: fewer than two seeds, or every seed has the same
    difference (zero variance). ``rel_diff`` is the mean difference over ``mean(b)``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need the same 1-d shape, got {a.shape} and {b.shape}")
    diff = a - b
    n = int(diff.size)
    mean_diff = float(diff.mean()) if n else math.nan
    p = math.nan
    if n >= 2 and np.ptp(diff) > 0:
        p = float(stats.ttest_rel(a, b).pvalue)
    base = float(b.mean()) if n else math.nan
    return {
        "n": n,
        "mean_diff": mean_diff,
        "rel_diff": mean_diff / base if base else math.nan,
        "p": p,
    }


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided p-value an exact Wilcoxon signed-rank test can reach with ``n``
    pairs (2 / 2^n): 0.0625 for 5 seeds, which is why it is not the primary test here."""
    return 2.0 / 2.0**n if n > 0 else math.nan


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is left out of
    the family). Adjusted values are monotone in the raw ones and never exceed 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def hierarchical_bootstrap(
    diffs: Sequence[np.ndarray], samples: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Percentile confidence interval of the mean per-user difference, resampling seeds, then
    users within each drawn seed.

    ``diffs[s]`` holds seed ``s``'s per-user differences (model A − model B on the same test
    users of that seed). One replicate draws ``len(diffs)`` seeds with replacement and, for each
    drawn seed, as many of its users with replacement; its statistic is the mean over the drawn
    seeds of the mean over their drawn users. The point estimate is the same statistic on the
    data as they are (the mean of the per-seed means).

    The random draws are, per replicate: the seed indices (``rng.integers(S, size=S)``), then
    for each drawn seed in order its user indices (``rng.integers(n_s, size=n_s)``), from
    ``numpy.random.default_rng(seed)`` — written down so that the result can be recomputed.
    """
    groups = [np.asarray(d, dtype=np.float64) for d in diffs]
    if not groups or any(g.ndim != 1 or g.size == 0 for g in groups):
        raise ValueError("hierarchical_bootstrap: every seed needs at least one user difference")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: expected a probability in (0, 1)")
    rng = np.random.default_rng(seed)
    n_seeds = len(groups)
    stat = np.empty(samples)
    for r in range(samples):
        picked = rng.integers(n_seeds, size=n_seeds)
        total = 0.0
        for s in picked:
            g = groups[s]
            total += g[rng.integers(g.size, size=g.size)].mean()
        stat[r] = total / n_seeds
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stat, [alpha, 1.0 - alpha])
    return {
        "estimate": float(np.mean([g.mean() for g in groups])),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "level": level,
        "samples": samples,
        "seed": seed,
    }
