"""Aggregate: jobs of one configuration summarised over their seeds — one rule, written once.

The rule: a job counts when it has metrics (status ``ok``, or a status a guard recorded such as
``collapsed``, which is flagged, never dropped: it is an outcome of its configuration); failed
and missing jobs do not count. Per configuration and metric: the mean, the sample standard
deviation (ddof = 1) and the count; with one seed the standard deviation is NaN (shown as no
``±``), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from egra.experiments.collect import FAILED, MISSING, SEED_KEYS

STATUS_ORDER = ("ok", "collapsed", "diverged", "no_validation", FAILED, MISSING)


def done(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with metrics (every status but failed and missing)."""
    return frame[~frame["status"].isin([FAILED, MISSING])]


def override_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.attrs.get("override_columns", []) if c in frame.columns]


def _key(v) -> object:
    """A hashable, NaN-safe group key for one cell."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Those of ``columns`` that take more than one value (missing counts as a value)."""
    return [c for c in columns if len({repr(_key(v)) for v in frame[c]}) > 1]


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The override columns that tell configurations apart: those that vary, seeds excluded."""
    return [c for c in varying(frame, override_columns(frame)) if c not in SEED_KEYS]


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std with ddof = 1 — NaN for fewer than two values —, count) of the
    numeric, non-missing ``values``."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan"), int(x.size)


def status_counts(statuses: Sequence[str]) -> str:
    """``"4 ok, 1 collapsed"``: how the jobs of a group ended."""
    counts = pd.Series(list(statuses), dtype=object).value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(
        s for s in counts.index if s not in STATUS_ORDER
    )
    return ", ".join(f"{counts[s]} {s}" for s in order) or "none"


def summarize(frame: pd.DataFrame, metrics: Sequence[str], by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration (the values of ``by``, default :func:`config_columns`, in order
    of first appearance): ``<metric> mean``, ``<metric> std``, ``<metric> n`` for each metric
    present, ``runs`` (how its jobs ended), ``seeds`` (jobs that count) and ``jobs``."""
    by = list(config_columns(frame) if by is None else by)
    metrics = [m for m in metrics if m in frame.columns]
    keys = frame[by].map(_key) if by else pd.DataFrame(index=frame.index)
    rows = []
    groups = keys.groupby(by, sort=False, dropna=False).groups if by else {(): frame.index}
    for key, index in groups.items():
        part = frame.loc[index]
        counted = done(part)
        row: dict = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for m in metrics:
            row[f"{m} mean"], row[f"{m} std"], row[f"{m} n"] = mean_std(counted[m])
        row["runs"] = status_counts(part["status"].tolist())
        row["seeds"] = len(counted)
        row["jobs"] = ", ".join(map(str, part["job"])) if "job" in part else ""
        rows.append(row)
    columns = [*by, *[f"{m} {s}" for m in metrics for s in ("mean", "std", "n")], "runs", "seeds", "jobs"]
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["by"], out.attrs["metrics"] = by, metrics
    return out


def per_seed(frame: pd.DataFrame, metric: str, by: str, seed: str = "seed") -> pd.DataFrame:
    """``metric`` of the jobs with metrics as a table: one row per value of ``by``, one column
    per seed (NaN where a seed has no result)."""
    part = done(frame)
    return part.pivot_table(index=by, columns=seed, values=metric, aggfunc="first", sort=False)
