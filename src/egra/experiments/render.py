"""Render: Markdown tables, CSV and PNG plots of aggregated results.

Plots use matplotlib's ``Figure`` directly (no pyplot), so importing this module never changes
the backend of a notebook or script that imports it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from egra.experiments.aggregate import _key, config_columns, done, summarize
from egra.experiments.collect import sort_key

SENSITIVITY_METRICS = ("test/Recall@20", "test/NDCG@20")
LONG_TAIL_METRICS = ("Recall@20", "NDCG@20")
_POPGROUP = re.compile(r"^(?P<split>[^/]+)/popgroup(?P<g>\d+)/(?P<metric>.+)$")


def fmt_value(v: Any) -> str:
    v = _key(v)
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def fmt_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``mean ± std``; the mean alone when the std is undefined (one seed)."""
    if mean is None or math.isnan(mean):
        return ""
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def fmt_signed(x: float, digits: int = 4) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:+.{digits}f}"


def fmt_percent(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:+.1f}%"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A Markdown table; ``align`` per column: ``l`` or ``r`` (default: first left, rest right)."""
    align = align or ["l", *["r"] * (len(head) - 1)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(
    summary: pd.DataFrame, digits: int = 4, bold_best: bool = True, label: str = "config"
) -> str:
    """One row per configuration of an :func:`~egra.experiments.aggregate.summarize` frame:
    its values, ``mean ± std`` per metric (the best mean in bold when there are several rows),
    how its runs ended and the seeds that count."""
    by = list(summary.attrs.get("by", []))
    metrics = list(summary.attrs.get("metrics", []))
    best = {}
    if bold_best and len(summary) > 1:
        best = {m: summary[f"{m} mean"].max() for m in metrics if summary[f"{m} mean"].notna().any()}
    rows = []
    for _, row in summary.iterrows():
        cells = [fmt_value(row[c]) for c in by] if by else ["all jobs"]
        for m in metrics:
            text = fmt_mean_std(float(row[f"{m} mean"]), float(row[f"{m} std"]), digits)
            cells.append(f"**{text}**" if m in best and text and row[f"{m} mean"] == best[m] else text)
        cells += [str(row["runs"]), str(int(row["seeds"]))]
        rows.append(cells)
    head = [*(by or [label]), *metrics, "runs", "seeds"]
    return table(head, rows, ["l"] * max(len(by), 1) + ["r"] * len(metrics) + ["l", "r"])


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


# --------------------------------------------------------------------------- plots


def _is_number(v: Any) -> bool:
    v = _key(v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sort_key(v: Any) -> tuple:
    return sort_key(_key(v))


def numeric_params(frame: pd.DataFrame) -> list[str]:
    """Swept numeric settings (seeds excluded): the x-axes of sensitivity curves."""
    ok = done(frame)
    return [c for c in config_columns(frame) if ok[c].nunique() > 1 and all(_is_number(v) for v in ok[c])]


def choice_params(frame: pd.DataFrame) -> list[str]:
    """Swept non-numeric settings (``model``, ``model.graph_source``): bar-chart x-axes."""
    numeric = set(numeric_params(frame))
    ok = done(frame)
    return [c for c in config_columns(frame) if c not in numeric and ok[c].map(repr).nunique() > 1]


def use_log_x(param: str, values) -> bool:
    """Log x-axis for λ parameters, or positive values spanning two decades or more."""
    vals = [float(v) for v in values if _is_number(v)]
    if not vals or min(vals) <= 0:
        return False
    return "lambda" in param.lower() or max(vals) / min(vals) >= 100


def sensitivity_table(
    frame: pd.DataFrame, param: str, metrics: Sequence[str] = SENSITIVITY_METRICS, by: Sequence[str] = ()
) -> pd.DataFrame:
    """Per value of ``param`` (and of ``by``): mean, std and count of each metric over every
    other job (other settings and seeds), sorted by the values."""
    out = summarize(frame, metrics, [*by, param])
    return out.sort_values([*by, param], kind="stable", key=lambda s: s.map(_sort_key)).reset_index(drop=True)


def _label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in zip(keys, values)) or "all jobs"


def _figure(n_panels: int, width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * max(n_panels, 1), height), layout="constrained")
    return fig, fig.subplots(1, max(n_panels, 1), squeeze=False)[0]


def _errors(std: pd.Series) -> np.ndarray:
    return std.fillna(0.0).to_numpy(dtype=float)  # one seed: no bar, not a zero-width claim


def plot_sensitivity(
    frame: pd.DataFrame, param: str, path=None, metrics: Sequence[str] = SENSITIVITY_METRICS
):
    """One panel per metric: mean vs ``param`` with std error bars; one line per value of the
    other non-numeric swept settings (e.g. ``model``). Returns the Figure."""
    numeric = set(numeric_params(frame))
    by = [c for c in config_columns(frame) if c != param and c not in numeric]
    metrics = [m for m in metrics if m in frame.columns]
    tab = sensitivity_table(frame, param, metrics, by)
    fig, axes = _figure(len(metrics), 5.0, 3.8)
    log_x = use_log_x(param, tab[param])
    for ax, m in zip(axes, metrics):
        groups = tab.groupby(by, sort=False, dropna=False) if by else [((), tab)]
        for key, part in groups:
            key = key if isinstance(key, tuple) else (key,)
            ax.errorbar(
                part[param].astype(float),
                part[f"{m} mean"],
                yerr=_errors(part[f"{m} std"]),
                marker="o",
                capsize=3,
                label=_label(by, key) if by else None,
            )
        if log_x:
            ax.set_xscale("log")
        ax.set(xlabel=param, ylabel=m)
        ax.grid(True, alpha=0.3)
        if by:
            ax.legend(fontsize="small", loc="best")
    fig.suptitle(f"sensitivity to {param} (mean ± std over other settings and seeds)", fontsize="medium")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_choice(frame: pd.DataFrame, param: str, path=None, metrics: Sequence[str] = SENSITIVITY_METRICS):
    """One panel per metric: a bar per value of the categorical ``param`` (mean ± std over the
    other settings and seeds). Returns the Figure."""
    metrics = [m for m in metrics if m in frame.columns]
    tab = sensitivity_table(frame, param, metrics)
    labels = [fmt_value(v) for v in tab[param]]
    fig, axes = _figure(len(metrics), max(4.0, 1.0 + 0.9 * len(labels)), 3.8)
    for ax, m in zip(axes, metrics):
        x = np.arange(len(labels))
        mean, err = tab[f"{m} mean"].to_numpy(dtype=float), _errors(tab[f"{m} std"])
        ax.bar(x, mean, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        tilt = max(map(len, labels), default=0) > 8  # long labels: tilted, anchored at their end
        ax.set_xticks(x, labels, rotation=30 if tilt else 0, ha="right" if tilt else "center")
        # Start the axis near the smallest bar: differences between choices are often a few percent.
        lo, hi = float(np.nanmin(mean - err)), float(np.nanmax(mean + err))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            ax.set_ylim(max(0.0, lo - 0.25 * (hi - lo)), hi + 0.1 * (hi - lo))
        ax.set(xlabel=param, ylabel=m)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{param} (mean ± std over other settings and seeds)", fontsize="medium")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def long_tail_groups(frame: pd.DataFrame, metric: str = "Recall@20", split: str = "test") -> list[int]:
    """The popularity groups ``g`` with a ``{split}/popgroup{g}/{metric}`` column, sorted."""
    ok = done(frame)
    out = []
    for c in frame.columns:
        m = _POPGROUP.match(str(c))
        if m and m["split"] == split and m["metric"] == metric and ok[c].notna().any():
            out.append(int(m["g"]))
    return sorted(out)


def long_tail_table(
    frame: pd.DataFrame, metric: str = "Recall@20", split: str = "test", by: Sequence[str] | None = None
) -> pd.DataFrame:
    """Rows: configurations; columns ``g<g> mean`` / ``g<g> std`` per popularity group (0 = least
    popular), over seeds."""
    by = list(config_columns(frame) if by is None else by)
    groups = long_tail_groups(frame, metric, split)
    s = summarize(frame, [f"{split}/popgroup{g}/{metric}" for g in groups], by)
    out = pd.DataFrame({"config": [_label(by, [r[c] for c in by]) for _, r in s.iterrows()]})
    for g in groups:
        out[f"g{g} mean"] = s[f"{split}/popgroup{g}/{metric} mean"].to_numpy()
        out[f"g{g} std"] = s[f"{split}/popgroup{g}/{metric} std"].to_numpy()
    return out


def long_tail_markdown(
    frame: pd.DataFrame, metric: str = "Recall@20", split: str = "test", by: Sequence[str] | None = None
) -> str:
    groups = long_tail_groups(frame, metric, split)
    if not groups:
        return f"(no {split}/popgroup<g>/{metric} in the metrics)"
    tab = long_tail_table(frame, metric, split, by)
    rows = [
        [r["config"].split("=", 1)[-1] if by and len(by) == 1 else r["config"]]
        + [fmt_mean_std(r[f"g{g} mean"], r[f"g{g} std"]) for g in groups]
        for _, r in tab.iterrows()
    ]
    return table([by[0] if by and len(by) == 1 else "config", *[f"g{g}" for g in groups]], rows)


def plot_long_tail(
    frame: pd.DataFrame,
    path=None,
    metrics: Sequence[str] = LONG_TAIL_METRICS,
    split: str = "test",
    by: Sequence[str] | None = None,
):
    """Grouped bars: per popularity group (x, 0 = least popular) one bar per configuration, with
    std over seeds as error bars; one panel per metric that has group columns."""
    metrics = [m for m in metrics if long_tail_groups(frame, m, split)]
    tables = {m: long_tail_table(frame, m, split, by) for m in metrics}
    n_configs = max((len(t) for t in tables.values()), default=1)
    ncols = 1 if n_configs <= 3 else 2
    fig, axes = _figure(len(metrics), 6.0, 3.6 + 0.22 * math.ceil(n_configs / ncols) + 0.3)
    for ax, m in zip(axes, metrics):
        tab, groups = tables[m], long_tail_groups(frame, m, split)
        x = np.arange(len(groups))
        width = 0.8 / max(len(tab), 1)
        for i, (_, row) in enumerate(tab.iterrows()):
            ax.bar(
                x + (i - (len(tab) - 1) / 2) * width,
                [row[f"g{g} mean"] for g in groups],
                width,
                yerr=_errors(pd.Series([row[f"g{g} std"] for g in groups])),
                capsize=2,
                label=row["config"],
            )
        ax.set_xticks(x, [f"g{g}" for g in groups])
        ax.set(xlabel="popularity group (g0 = least popular)", ylabel=f"{split}/{m}")
        ax.grid(True, axis="y", alpha=0.3)
    if metrics:
        # One legend for all panels, below them: configuration labels can be long.
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)
    fig.suptitle("long tail: per popularity group", fontsize="medium")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def write_plots(frame: pd.DataFrame, out_dir: Path, metrics: Sequence[str] = SENSITIVITY_METRICS):
    """Every plot the frame supports: a sensitivity curve per swept numeric setting, a bar chart
    per swept choice, the long-tail bars. Returns (files written, notes on what was skipped)."""
    written: list[Path] = []
    skipped: list[str] = []
    ok = done(frame)
    if ok.empty:
        return written, ["plots: no finished job"]
    sens = [m for m in metrics if m in ok.columns]
    params = numeric_params(frame)
    if not params:
        skipped.append("sensitivity curves: no swept numeric setting (seeds aside)")
    elif not sens:
        skipped.append(f"sensitivity curves: none of {', '.join(metrics)} in the metrics")
    for p in params if sens else []:
        written.append(out_dir / f"sensitivity_{safe_name(p)}.png")
        plot_sensitivity(frame, p, written[-1], sens)
    for p in choice_params(frame) if sens else []:
        written.append(out_dir / f"choice_{safe_name(p)}.png")
        plot_choice(frame, p, written[-1], sens)
    if any(long_tail_groups(frame, m) for m in LONG_TAIL_METRICS):
        written.append(out_dir / "long_tail.png")
        plot_long_tail(frame, written[-1])
    else:
        skipped.append("long-tail bars: no test/popgroup<g>/Recall@20 metrics")
    return written, skipped
