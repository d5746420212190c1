"""Sweep reports: gather a Hydra multirun's jobs into one table, summarise over seeds, plot.

A multirun directory holds one sub-directory per job (``0/``, ``1/``, ...), each with
``.hydra/overrides.yaml`` (the job's ``key=value`` overrides) and, once the job finished,
``metrics.json``. :func:`collect` reads them, :func:`results_frame` makes one row per job
(override columns, then metrics), :func:`summarize` groups the rows by every override except
the seeds and gives mean and sample standard deviation (ddof=1) per metric, and
:func:`write_report` writes ``results.csv``, ``report.md`` and the PNG plots.

Plots use matplotlib's ``Figure`` directly (no pyplot), so importing this module never changes
the backend of a notebook or script that imports it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

SEED_KEYS = ("seed", "data.seed")
IGNORED_PREFIXES = ("hydra.", "hydra/", "paths.")
DEFAULT_METRICS = (
    "test/Recall@10",
    "test/Recall@20",
    "test/NDCG@10",
    "test/NDCG@20",
    "valid/Recall@20",
    "test/popgroup0/Recall@20",
)
SENSITIVITY_METRICS = ("test/Recall@20", "test/NDCG@20")
LONG_TAIL_METRICS = ("Recall@20", "NDCG@20")
# Folders inside a job directory that never hold another job.
_SKIP_DIRS = {"checkpoints", "csv", "wandb", "tensorboard", "__pycache__"}
_MAX_DEPTH = 4
_POPGROUP = re.compile(r"^(?P<split>[^/]+)/popgroup(?P<g>\d+)/(?P<metric>.+)$")


# --------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """A Hydra override value as a Python scalar: int, float, bool, None (``null``) or str.

    Quoted strings lose their quotes; anything else that is not a number, bool or ``null``
    (lists, dicts, sweep syntax) stays the raw string.
    """
    s = str(text).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    low = s.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def parse_override(text: str) -> tuple[str, Any] | None:
    """``"model.P=10"`` -> ``("model.P", 10)``; None for ``hydra.*``/``paths.*`` keys.

    ``+key=v`` and ``++key=v`` give ``key``; a deletion ``~key`` gives ``(key, "~")``.
    """
    s = str(text).strip()
    if not s:
        return None
    if s.startswith("~"):
        key, value = s[1:].split("=", 1)[0], "~"
    elif "=" in s:
        key, raw = s.split("=", 1)
        key, value = key.lstrip("+"), parse_value(raw)
    else:
        return None
    key = key.strip()
    if not key or any(key.startswith(p) for p in IGNORED_PREFIXES):
        return None
    return key, value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """An overrides list as an ordered dict (a later duplicate key wins, as in Hydra)."""
    out: dict[str, Any] = {}
    for item in items:
        parsed = parse_override(item)
        if parsed is not None:
            out[parsed[0]] = parsed[1]
    return out


def _read_override_list(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text()) or []
    return [str(x) for x in data]


# --------------------------------------------------------------------------- collecting


@dataclass
class Job:
    """One job directory: its overrides and, if it finished, its metrics."""

    path: Path
    name: str
    raw_overrides: list[str]
    overrides: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.metrics is not None


@dataclass
class Collection:
    """The jobs found under the given directories plus notes on jobs that never started."""

    roots: list[Path]
    jobs: list[Job]
    # (root, override list) of each job the basic sweeper would run but that has no directory.
    not_started: list[tuple[Path, list[str]]] = field(default_factory=list)

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]


def _natural_key(p: Path) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", p.name) if t)


def _is_job_dir(d: Path) -> bool:
    return (d / "metrics.json").is_file() or (d / ".hydra" / "overrides.yaml").is_file()


def find_job_dirs(root: str | Path) -> list[Path]:
    """Job directories under ``root`` (``root`` itself when it is a single run), in natural order."""
    root = Path(root)
    if _is_job_dir(root):
        return [root]
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        for child in sorted((c for c in d.iterdir() if c.is_dir()), key=_natural_key):
            if child.name.startswith(".") or child.name in _SKIP_DIRS:
                continue
            if _is_job_dir(child):
                found.append(child)
            else:
                walk(child, depth + 1)

    walk(root, 1)
    return found


def load_job(job_dir: str | Path, name: str | None = None) -> Job:
    job_dir = Path(job_dir)
    raw = _read_override_list(job_dir)
    metrics, error = None, None
    mpath = job_dir / "metrics.json"
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text())
            if not isinstance(metrics, dict):
                metrics, error = None, "metrics.json is not a JSON object"
        except (OSError, ValueError) as e:
            error = f"unreadable metrics.json ({e})"
    else:
        error = "no metrics.json"
    return Job(job_dir, name or job_dir.name, raw, parse_overrides(raw), metrics, error)


def expected_override_lists(multirun_dir: str | Path) -> list[list[str]] | None:
    """The jobs' override lists the basic sweeper expands ``multirun.yaml`` into, or None.

    None when there is no ``multirun.yaml``, the sweeper is not Hydra's basic sweeper (Optuna
    and others choose jobs at run time) or the overrides cannot be expanded.
    """
    path = Path(multirun_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        conf = yaml.safe_load(path.read_text()) or {}
        hydra_conf = conf.get("hydra") or {}
        target = str((hydra_conf.get("sweeper") or {}).get("_target_", ""))
        if not target.endswith("BasicSweeper"):
            return None
        task = [str(x) for x in ((hydra_conf.get("overrides") or {}).get("task") or [])]
        params = (hydra_conf.get("sweeper") or {}).get("params") or {}
        args = [f"{k}={v}" for k, v in params.items()] + task

        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(args)
        batches = BasicSweeper.split_arguments(parsed, None)
        return [list(job) for batch in batches for job in batch]
    except Exception:  # an unexpandable sweep only loses the "not started" notes
        return None


def collect(dirs: str | Path | Sequence[str | Path]) -> Collection:
    """Every job under ``dirs``; names are paths relative to the directory given (prefixed with
    the directory's name when several are given)."""
    roots = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    jobs: list[Job] = []
    not_started: list[tuple[Path, list[str]]] = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        job_dirs = find_job_dirs(root)
        for d in job_dirs:
            rel = d.name if d == root else d.relative_to(root).as_posix()
            name = f"{root.name}/{rel}" if len(roots) > 1 and d != root else rel
            jobs.append(load_job(d, name))
        expected = expected_override_lists(root)
        if expected:
            seen = [_read_override_list(d) for d in job_dirs]
            for exp in expected:
                if exp in seen:
                    seen.remove(exp)
                else:
                    not_started.append((root, exp))
    return Collection(roots, jobs, not_started)


def _describe(raw: list[str], keys: set[str] | None) -> str:
    """The overrides of ``raw`` whose key is in ``keys`` (all but hydra/paths when None)."""
    shown = [o for o in raw if (p := parse_override(o)) is not None and (keys is None or p[0] in keys)]
    return " ".join(shown) or "no overrides"


def _distinguishing_keys(override_dicts: Sequence[dict[str, Any]]) -> set[str] | None:
    """Override keys whose value differs between jobs (None when there are none)."""
    keys = {k for d in override_dicts for k in d}
    varying_keys = {k for k in keys if len({repr(_norm(d.get(k))) for d in override_dicts}) > 1}
    return varying_keys or None


# --------------------------------------------------------------------------- tables


def results_frame(collection: Collection | Sequence[Job]) -> pd.DataFrame:
    """One row per job: ``job``, ``status``, the override columns, metric columns, other fields.

    A metrics.json field whose name is also an override key (``model``, ``seed``) is kept as
    ``metrics.<name>``. ``frame.attrs["override_columns"]`` lists the override columns.
    """
    jobs = collection.jobs if isinstance(collection, Collection) else list(collection)
    override_cols: list[str] = []
    for job in jobs:
        override_cols += [k for k in job.overrides if k not in override_cols]
    metric_keys: list[str] = []
    for job in jobs:
        metric_keys += [k for k in (job.metrics or {}) if k not in metric_keys]
    scores = sorted(k for k in metric_keys if "/" in k)
    info = [k for k in metric_keys if "/" not in k]

    def col(k: str) -> str:
        return f"metrics.{k}" if k in override_cols or k in ("job", "status") else k

    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": "ok" if job.ok else "failed"}
        row.update({k: job.overrides.get(k) for k in override_cols})
        row.update({col(k): (job.metrics or {}).get(k) for k in scores + info})
        rows.append(row)
    columns = ["job", "status", *override_cols, *[col(k) for k in scores + info]]
    frame = pd.DataFrame(rows, columns=columns)
    if override_cols and len(frame):
        # Rows in the order of the swept values (a grid "500,3,5" lists 3, 5, 500), not of the jobs.
        frame = frame.sort_values(override_cols, kind="stable", key=lambda s: s.map(_sort_key))
        frame = frame.reset_index(drop=True)
    frame.attrs["override_columns"] = list(override_cols)
    return frame


def override_columns(frame: pd.DataFrame) -> list[str]:
    """The override columns of a :func:`results_frame` (also after a CSV round trip, where they
    are the columns between ``status`` and the first ``split/metric`` column)."""
    cols = frame.attrs.get("override_columns")
    if cols is not None:
        return [c for c in cols if c in frame.columns]
    names = list(frame.columns)
    start = names.index("status") + 1 if "status" in names else 0
    out = []
    for c in names[start:]:
        if "/" in c:
            break
        out.append(c)
    return out


def load_results(csv_path: str | Path) -> pd.DataFrame:
    """Read a ``results.csv`` written by :func:`write_report` back into a frame."""
    frame = pd.read_csv(csv_path)
    frame.attrs["override_columns"] = override_columns(frame)
    return frame


def _norm(v: Any) -> Any:
    """Plain Python scalar; None for missing (None or NaN)."""
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Those of ``columns`` that take more than one value (missing counts as a value)."""
    return [c for c in columns if len({_norm(v) for v in frame[c]}) > 1]


def config_columns(frame: pd.DataFrame) -> list[str]:
    """Override columns that tell configurations apart: varying ones, seeds excluded."""
    return [c for c in varying(frame, override_columns(frame)) if c not in SEED_KEYS]


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"] if "status" in frame.columns else frame


def _groups(frame: pd.DataFrame, by: Sequence[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """Rows grouped by the values of ``by`` in order of first appearance (None = missing)."""
    keys: dict[tuple, list[int]] = {}
    columns = [frame[c].tolist() for c in by]  # per-column values keep their own types
    for i in range(len(frame)):
        keys.setdefault(tuple(_norm(col[i]) for col in columns), []).append(i)
    return [(k, frame.iloc[idx]) for k, idx in keys.items()]


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
    return float(np.mean(x)), std, int(x.size)


def resolve_metrics(frame: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[str]:
    """The requested metrics present in ``frame`` (``Recall@20`` means ``test/Recall@20``)."""
    wanted = [m if "/" in m else f"test/{m}" for m in (metrics or DEFAULT_METRICS)]
    return [m for m in wanted if m in frame.columns and _ok(frame)[m].notna().any()]


def summarize(
    frame: pd.DataFrame, metrics: Sequence[str] | None = None, by: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) per configuration of the finished jobs.

    ``by`` defaults to :func:`config_columns`. Columns: the ``by`` columns, ``<metric> mean``,
    ``<metric> std`` for each metric, ``seeds`` (finished jobs in the group) and ``jobs``.
    """
    by = list(config_columns(frame) if by is None else by)
    metrics = resolve_metrics(frame, metrics)
    ok = _ok(frame)
    rows = []
    for key, group in _groups(ok, by):
        row: dict[str, Any] = dict(zip(by, key))
        for m in metrics:
            mean, std, _ = _mean_std(group[m])
            row[f"{m} mean"], row[f"{m} std"] = mean, std
        row["seeds"] = len(group)
        row["jobs"] = ", ".join(str(j) for j in group["job"]) if "job" in group else ""
        rows.append(row)
    columns = [*by, *[f"{m} {s}" for m in metrics for s in ("mean", "std")], "seeds", "jobs"]
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["by"], out.attrs["metrics"] = by, metrics
    return out


def _fmt_value(v: Any) -> str:
    v = _norm(v)
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return ""
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: pd.DataFrame, digits: int = 4, bold_best: bool = True) -> str:
    """Markdown: one row per configuration, ``mean ± std`` per metric (the best mean in bold when
    there are several rows), then the number of seeds."""
    by = list(summary.attrs.get("by", []))
    metrics = list(summary.attrs.get("metrics", []))
    head = [*(by or ["config"]), *metrics, "seeds"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if c in by or c == "config" else "---:" for c in head) + "|",
    ]
    best = {}
    if bold_best and len(summary) > 1:
        for m in metrics:
            col = summary[f"{m} mean"]
            if col.notna().any():
                best[m] = float(col.max())
    for _, row in summary.iterrows():
        cells = [_fmt_value(row[c]) for c in by] if by else ["all jobs"]
        for m in metrics:
            text = format_mean_std(float(row[f"{m} mean"]), float(row[f"{m} std"]), digits)
            if m in best and text and float(row[f"{m} mean"]) == best[m]:
                text = f"**{text}**"
            cells.append(text)
        cells.append(str(int(row["seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failure_notes(collection: Collection) -> list[str]:
    """One line per job without usable metrics, and per expected job that never started; jobs are
    described by the overrides that differ between jobs."""
    keys = _distinguishing_keys(
        [j.overrides for j in collection.jobs] + [parse_overrides(o) for _, o in collection.not_started]
    )
    notes = []
    for job in collection.failed:
        # error.txt holds the failure itself (one line or the traceback); the log is the fallback.
        error_file = job.path / "error.txt"
        logs = [error_file] if error_file.is_file() else sorted(job.path.glob("*.log"))
        hint = f"; see {logs[0]}" if logs else ""
        notes.append(f"job {job.name} ({_describe(job.raw_overrides, keys)}): {job.error}{hint}")
    for root, raw in collection.not_started:
        where = f" in {root}" if len(collection.roots) > 1 else ""
        notes.append(
            f"not started ({_describe(raw, keys)}): expected from multirun.yaml{where}, no job directory"
        )
    return notes


# --------------------------------------------------------------------------- plots


def _is_number(v: Any) -> bool:
    v = _norm(v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_params(frame: pd.DataFrame) -> list[str]:
    """Swept numeric overrides (seeds excluded): the x-axes of sensitivity curves."""
    ok = _ok(frame)
    out = []
    for c in config_columns(frame):
        values = [_norm(v) for v in ok[c]]
        if len(set(values)) > 1 and all(_is_number(v) for v in values):
            out.append(c)
    return out


def _label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in zip(keys, values)) or "all jobs"


def sensitivity_table(
    frame: pd.DataFrame, param: str, metrics: Sequence[str] = SENSITIVITY_METRICS, by: Sequence[str] = ()
) -> pd.DataFrame:
    """Per value of ``param`` (and of ``by``): mean, std (ddof=1, 0 for one row) and row count
    of each metric over all other finished jobs (other parameters and seeds)."""
    ok = _ok(frame)
    metrics = [m for m in metrics if m in ok.columns]
    rows = []
    for key, group in _groups(ok, [*by, param]):
        row: dict[str, Any] = dict(zip([*by, param], key))
        for m in metrics:
            mean, std, n = _mean_std(group[m])
            row[f"{m} mean"], row[f"{m} std"] = mean, (0.0 if n == 1 else std)
        row["n"] = len(group)
        rows.append(row)
    out = pd.DataFrame(
        rows, columns=[*by, param, *[f"{m} {s}" for m in metrics for s in ("mean", "std")], "n"]
    )
    return out.sort_values([*by, param], kind="stable", key=lambda s: s.map(_sort_key)).reset_index(drop=True)


def _sort_key(v: Any) -> tuple:
    v = _norm(v)
    if v is None:
        return (2, 0.0, "")
    if _is_number(v):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def use_log_x(param: str, values: Iterable[Any]) -> bool:
    """Log x-axis for lambda parameters, or positive values spanning two decades or more."""
    vals = [float(v) for v in values if _is_number(v)]
    if not vals or min(vals) <= 0:
        return False
    return "lambda" in param.lower() or max(vals) / min(vals) >= 100


def plot_sensitivity(
    frame: pd.DataFrame,
    param: str,
    path: str | Path | None = None,
    metrics: Sequence[str] = SENSITIVITY_METRICS,
):
    """One panel per metric: mean vs ``param`` with std error bars; one line per value of the
    other non-numeric swept overrides (e.g. ``model``). Returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    numeric = set(numeric_params(frame))
    by = [c for c in config_columns(frame) if c != param and c not in numeric]
    metrics = [m for m in metrics if m in frame.columns]
    table = sensitivity_table(frame, param, metrics, by)
    fig = Figure(figsize=(5.0 * max(len(metrics), 1), 3.8), layout="constrained")
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    log_x = use_log_x(param, table[param])
    for ax, m in zip(axes, metrics):
        for key, part in _groups(table, by):
            ax.errorbar(
                part[param].astype(float),
                part[f"{m} mean"],
                yerr=part[f"{m} std"],
                marker="o",
                capsize=3,
                label=_label(by, key) if by else None,
            )
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(m)
        ax.grid(True, alpha=0.3)
        if by:
            ax.legend(fontsize="small", loc="best")
    fig.suptitle(f"sensitivity to {param} (mean ± std over other parameters and seeds)", fontsize="medium")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def choice_params(frame: pd.DataFrame) -> list[str]:
    """Swept non-numeric overrides (e.g. ``model.graph_source``, ``model``): bar-chart x-axes."""
    numeric = set(numeric_params(frame))
    ok = _ok(frame)
    return [c for c in config_columns(frame) if c not in numeric and len({_norm(v) for v in ok[c]}) > 1]


def plot_choice(
    frame: pd.DataFrame,
    param: str,
    path: str | Path | None = None,
    metrics: Sequence[str] = SENSITIVITY_METRICS,
):
    """One panel per metric: a bar per value of the categorical ``param`` (mean ± std over the
    other parameters and seeds). Returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if m in frame.columns]
    table = sensitivity_table(frame, param, metrics)
    labels = [_fmt_value(v) for v in table[param]]
    fig = Figure(
        figsize=(max(4.0, 1.0 + 0.9 * len(labels)) * max(len(metrics), 1), 3.8), layout="constrained"
    )
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    for ax, m in zip(axes, metrics):
        x = np.arange(len(labels))
        ax.bar(x, table[f"{m} mean"], yerr=table[f"{m} std"], capsize=3, color="tab:blue", alpha=0.8)
        tilt = max(map(len, labels), default=0) > 8  # long labels: tilted, anchored at their end
        ax.set_xticks(x, labels, rotation=30 if tilt else 0, ha="right" if tilt else "center")
        # Start the axis near the smallest bar: differences between choices are often a few percent.
        lo = float(np.nanmin(table[f"{m} mean"] - table[f"{m} std"].fillna(0)))
        hi = float(np.nanmax(table[f"{m} mean"] + table[f"{m} std"].fillna(0)))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            ax.set_ylim(max(0.0, lo - 0.25 * (hi - lo)), hi + 0.1 * (hi - lo))
        ax.set_xlabel(param)
        ax.set_ylabel(m)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{param} (mean ± std over other parameters and seeds)", fontsize="medium")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def long_tail_groups(frame: pd.DataFrame, metric: str = "Recall@20", split: str = "test") -> list[int]:
    """The popularity groups ``g`` with a ``{split}/popgroup{g}/{metric}`` column, sorted."""
    out = []
    for c in frame.columns:
        m = _POPGROUP.match(str(c))
        if m and m["split"] == split and m["metric"] == metric and _ok(frame)[c].notna().any():
            out.append(int(m["g"]))
    return sorted(out)


def long_tail_table(frame: pd.DataFrame, metric: str = "Recall@20", split: str = "test") -> pd.DataFrame:
    """Rows: configurations; columns ``g<g> mean`` / ``g<g> std`` per popularity group (0 = least
    popular), over seeds."""
    by = config_columns(frame)
    groups = long_tail_groups(frame, metric, split)
    rows = []
    for key, part in _groups(_ok(frame), by):
        row: dict[str, Any] = {"config": _label(by, key)}
        for g in groups:
            mean, std, n = _mean_std(part[f"{split}/popgroup{g}/{metric}"])
            row[f"g{g} mean"], row[f"g{g} std"] = mean, (0.0 if n == 1 else std)
        rows.append(row)
    return pd.DataFrame(rows, columns=["config", *[f"g{g} {s}" for g in groups for s in ("mean", "std")]])


def plot_long_tail(
    frame: pd.DataFrame,
    path: str | Path | None = None,
    metrics: Sequence[str] = LONG_TAIL_METRICS,
    split: str = "test",
):
    """Grouped bars: per popularity group (x, 0 = least popular) one bar per configuration, with
    std over seeds as error bars; one panel per metric that has group columns."""
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if long_tail_groups(frame, m, split)]
    n_configs = max(len(_groups(_ok(frame), config_columns(frame))), 1)
    ncols = 1 if n_configs <= 3 else 2
    legend_h = 0.22 * math.ceil(n_configs / ncols) + 0.3
    fig = Figure(figsize=(6.0 * max(len(metrics), 1), 3.6 + legend_h), layout="constrained")
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    for ax, m in zip(axes, metrics):
        table = long_tail_table(frame, m, split)
        groups = long_tail_groups(frame, m, split)
        x = np.arange(len(groups))
        width = 0.8 / max(len(table), 1)
        for i, (_, row) in enumerate(table.iterrows()):
            ax.bar(
                x + (i - (len(table) - 1) / 2) * width,
                [row[f"g{g} mean"] for g in groups],
                width,
                yerr=[row[f"g{g} std"] for g in groups],
                capsize=2,
                label=row["config"],
            )
        ax.set_xticks(x, [f"g{g}" for g in groups])
        ax.set_xlabel("popularity group (g0 = least popular)")
        ax.set_ylabel(f"{split}/{m}")
        ax.grid(True, axis="y", alpha=0.3)
    if metrics:
        # One legend for all panels, below them: configuration labels can be long.
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)
    fig.suptitle("long tail: per popularity group", fontsize="medium")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """What :func:`write_report` wrote and found."""

    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    table: str
    markdown: str
    failed: list[str]
    plots: list[Path]
    skipped: list[str]

    @property
    def files(self) -> list[Path]:
        return [self.out_dir / "results.csv", self.out_dir / "report.md", *self.plots]


class NoJobsError(ValueError):
    """The directories hold no job (no ``metrics.json`` and no ``.hydra/overrides.yaml``)."""


def write_report(
    dirs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    plots: bool = True,
) -> Report:
    """Collect the jobs under ``dirs`` and write ``results.csv``, ``report.md`` and PNG plots to
    ``out`` (default: the first directory). Raises :class:`NoJobsError` when there is no job."""
    collection = collect(dirs)
    if not collection.jobs:
        where = ", ".join(str(r) for r in collection.roots)
        raise NoJobsError(
            f"no jobs in {where}: expected job directories with metrics.json or .hydra/overrides.yaml "
            "(a Hydra multirun directory such as logs/train/multiruns/<time>/)"
        )
    out_dir = Path(out) if out is not None else collection.roots[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = results_frame(collection)
    frame.to_csv(out_dir / "results.csv", index=False)
    summary = summarize(frame, metrics)
    table = markdown_table(summary) if len(summary) else "(no finished job)"
    failed = failure_notes(collection)

    written: list[Path] = []
    skipped: list[str] = []
    ok = _ok(frame)
    if not plots:
        skipped.append("plots: disabled")
    elif ok.empty:
        skipped.append("plots: no finished job")
    else:
        params = numeric_params(frame)
        sens = [m for m in SENSITIVITY_METRICS if m in ok.columns]
        if not params:
            skipped.append("sensitivity curves: no swept numeric override (seeds aside)")
        elif not sens:
            skipped.append(f"sensitivity curves: none of {', '.join(SENSITIVITY_METRICS)} in the metrics")
        for p in params if sens else []:
            path = out_dir / f"sensitivity_{_safe_name(p)}.png"
            plot_sensitivity(frame, p, path, sens)
            written.append(path)
        for p in choice_params(frame) if sens else []:
            path = out_dir / f"choice_{_safe_name(p)}.png"
            plot_choice(frame, p, path, sens)
            written.append(path)
        if any(long_tail_groups(frame, m) for m in LONG_TAIL_METRICS):
            path = out_dir / "long_tail.png"
            plot_long_tail(frame, path)
            written.append(path)
        else:
            skipped.append("long-tail bars: no test/popgroup<g>/Recall@20 metrics")

    markdown = _report_markdown(collection, frame, table, failed, written, skipped, out_dir)
    (out_dir / "report.md").write_text(markdown)
    return Report(out_dir, frame, summary, table, markdown, failed, written, skipped)


def _report_markdown(collection, frame, table, failed, plots, skipped, out_dir) -> str:
    ok = int((frame["status"] == "ok").sum())
    fixed = [c for c in override_columns(frame) if c not in config_columns(frame) and c not in SEED_KEYS]
    seeds = [c for c in override_columns(frame) if c in SEED_KEYS]
    lines = ["# Sweep report", ""]
    lines.append("Source: " + ", ".join(f"`{r}`" for r in collection.roots))
    lines.append("")
    lines.append(f"Jobs: {len(frame)} found, {ok} finished, {len(frame) - ok} failed/missing.")
    if fixed:
        shown = ", ".join(f"`{c}={_fmt_value(frame[c].iloc[0])}`" for c in fixed)
        lines += ["", f"Same in every job: {shown}."]
    lines += [
        "",
        "Mean ± sample std (ddof=1) over "
        + (" / ".join(f"`{s}`" for s in seeds) if seeds else "the jobs of each configuration")
        + "; `seeds` = finished jobs per configuration; best mean per column in bold.",
        "",
        table,
        "",
    ]
    if failed or collection.not_started:
        lines += ["## Failed / missing jobs", "", *[f"- {n}" for n in failed], ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots]
        lines.append("")
    if skipped:
        lines += ["## Skipped", "", *[f"- {s}" for s in skipped], ""]
    lines += ["All rows: `results.csv`.", ""]
    return "\n".join(lines)
