"""``egra-report``: a sweep (or any set of run directories) as one table, its plots and its CSV.

collect (every job's config, overrides and metrics) → aggregate (mean ± std over the seeds of
each configuration: the settings that differ between jobs) → render (``report.md``,
``results.csv``, PNG plots). A directory holding ``compare.json`` is a comparison: its own
rendering is printed instead.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from egra.experiments import render
from egra.experiments.aggregate import config_columns, override_columns, summarize
from egra.experiments.collect import FAILED, MISSING, SEED_KEYS, collect, not_started

DEFAULT_METRICS = (
    "test/Recall@10",
    "test/Recall@20",
    "test/NDCG@10",
    "test/NDCG@20",
    "valid/Recall@20",
    "test/popgroup0/Recall@20",
)
RESULTS_CSV, REPORT_MD = "results.csv", "report.md"


class NoJobsError(ValueError):
    """The directories hold no job (no ``metrics.json`` and no ``.hydra/overrides.yaml``)."""


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
        return [self.out_dir / RESULTS_CSV, self.out_dir / REPORT_MD, *self.plots]


def resolve_metrics(frame: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    """The requested metrics present in ``frame`` (``Recall@20`` means ``test/Recall@20``)."""
    wanted = [m if "/" in m else f"test/{m}" for m in (metrics or DEFAULT_METRICS)]
    return [m for m in wanted if m in frame.columns and frame[m].notna().any()]


def results_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as ``results.csv`` holds it: job, status, the settings, the seeds, the metrics
    (the path and error columns only where they say something)."""
    metric_cols = [c for c in frame.columns if "/" in c or c.startswith("metrics.")]
    info = [c for c in frame.columns if c not in metric_cols and c not in ("job", "path", "status", "error")]
    info = [c for c in info if c not in override_columns(frame) and c not in SEED_KEYS]
    cols = ["job", "status", *override_columns(frame), *SEED_KEYS, *sorted(metric_cols), *info]
    if (frame["error"] != "").any():
        cols.append("error")
    return frame[[c for c in cols if c in frame.columns]]


def failure_notes(frame: pd.DataFrame) -> list[str]:
    """One line per job without metrics, and per planned job that never started; jobs are
    described by the settings that tell them apart."""
    keys = [*config_columns(frame), *[c for c in SEED_KEYS if frame[c].nunique(dropna=False) > 1]]
    notes = []
    for _, row in frame[frame["status"].isin([FAILED, MISSING])].iterrows():
        desc = " ".join(f"{k}={render.fmt_value(row[k])}" for k in keys) or "no overrides"
        # error.txt holds the failure itself (one line or the traceback); a log is the fallback.
        error_file = Path(row["path"]) / "error.txt"
        logs = [error_file] if error_file.is_file() else sorted(Path(row["path"]).glob("*.log"))
        hint = f"; see {logs[0]}" if logs else ""
        notes.append(f"job {row['job']} ({desc}): {row['error']}{hint}")
    for root, overrides in not_started(frame):
        where = f" in {root}" if len(frame.attrs.get("roots", [])) > 1 else ""
        notes.append(
            f"not started ({' '.join(overrides)}): expected from multirun.yaml{where}, no job directory"
        )
    return notes


def write_report(
    dirs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    plots: bool = True,
) -> Report:
    """Collect the jobs under ``dirs`` and write ``results.csv``, ``report.md`` and PNG plots to
    ``out`` (default: the first directory). Raises :class:`NoJobsError` when there is no job."""
    frame = collect(dirs)
    roots = [Path(r) for r in frame.attrs["roots"]]
    if frame.empty:
        raise NoJobsError(
            f"no jobs in {', '.join(map(str, roots))}: expected job directories with metrics.json or "
            ".hydra/overrides.yaml (a Hydra multirun directory such as logs/train/multiruns/<time>/)"
        )
    out_dir = Path(out) if out is not None else roots[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    results_csv(frame).to_csv(out_dir / RESULTS_CSV, index=False)
    summary = summarize(frame, resolve_metrics(frame, metrics))
    table = render.summary_table(summary) if len(summary) else "(no finished job)"
    failed = failure_notes(frame)
    if plots:
        written, skipped = render.write_plots(frame, out_dir)
    else:
        written, skipped = [], ["plots: disabled"]
    md = _markdown(frame, roots, table, failed, written, skipped, out_dir)
    (out_dir / REPORT_MD).write_text(md)
    return Report(out_dir, frame, summary, table, md, failed, written, skipped)


def sweep_command(root: Path) -> str | None:
    """The ``egra-train -m ...`` command a multirun directory was made by (from its
    ``multirun.yaml``), or None."""
    path = root / "multirun.yaml"
    if not path.is_file():
        return None
    hydra_conf = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
    task = (hydra_conf.get("overrides") or {}).get("task") or []
    return "egra-train -m " + shlex.join(str(t) for t in task)


def _markdown(frame, roots, table, failed, plots, skipped, out_dir) -> str:
    done = int((~frame["status"].isin([FAILED, MISSING])).sum())
    varying = set(config_columns(frame))
    fixed = [c for c in override_columns(frame) if c not in varying and c not in SEED_KEYS]
    seeds = [c for c in SEED_KEYS if frame[c].nunique(dropna=False) > 1]
    lines = ["# Sweep report", "", "Source: " + ", ".join(f"`{r}`" for r in roots), ""]
    commands = [c for c in map(sweep_command, roots) if c]
    if commands:
        lines += [*[f"Made by: `{c}`" for c in commands], ""]
    lines.append(f"Jobs: {len(frame)} found, {done} with results, {len(frame) - done} failed/missing.")
    if fixed:
        lines += [
            "",
            "Same in every job: "
            + ", ".join(f"`{c}={render.fmt_value(frame[c].iloc[0])}`" for c in fixed)
            + ".",
        ]
    over = " / ".join(f"`{s}`" for s in seeds) if seeds else "the jobs of each configuration"
    lines += [
        "",
        f"Mean ± sample std (ddof = 1; no ± with one seed) over {over}; `runs`: how the jobs ended "
        "(collapsed runs count, failed ones do not); `seeds`: jobs that count; best mean in bold.",
        "",
        table,
        "",
    ]
    if failed:
        lines += ["## Failed / missing jobs", "", *[f"- {n}" for n in failed], ""]
    if plots:
        lines += ["## Plots", "", *[f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots], ""]
    if skipped:
        lines += ["## Skipped", "", *[f"- {s}" for s in skipped], ""]
    lines += [f"All rows: `{RESULTS_CSV}`.", ""]
    return "\n".join(lines)
