"""Collect: every job of one or more run directories into one table.

A job directory is what ``egra-train`` leaves: ``.hydra/config.yaml`` (the composed config),
``.hydra/overrides.yaml`` (what the command line changed) and, once finished, ``metrics.json``;
a failed job of a multirun leaves ``error.txt`` instead. :func:`collect` gives one row per job:
``job``, ``path``, ``status``, ``error``, one column per overridden key (values read from the
job's config, typed; the overrides themselves are read with Hydra's own parser), the seeds,
then every metric. ``frame.attrs["override_columns"]`` names the override columns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

SEED_KEYS = ("seed", "data.seed")
# Keys that say where or how loudly a job ran, not what it computed.
IGNORED_PREFIXES = ("hydra.", "paths.", "logger", "trainer.enable_progress_bar", "threads", "verbose")
ERROR_FILE = "error.txt"
METRICS_FILE = "metrics.json"
# Statuses of a job with metrics: ok, or what a guard recorded (collapsed, diverged, ...).
FAILED, MISSING = "failed", "missing"
# Folders inside a job directory that never hold another job.
_SKIP_DIRS = {"checkpoints", "csv", "wandb", "tensorboard", "__pycache__", "logs"}
_MAX_DEPTH = 4


@dataclass
class Job:
    """One job directory as read from disk."""

    path: Path
    name: str
    overrides: list[str]
    config: DictConfig | None
    metrics: dict[str, Any] | None
    status: str
    error: str = ""

    @property
    def done(self) -> bool:
        """It has metrics (whatever its status: a collapsed run is an outcome of its config)."""
        return self.metrics is not None

    def value(self, key: str) -> Any:
        """``key`` of the job's config, interpolations resolved where they can be (None when the
        key is absent or refers to Hydra's runtime)."""
        if self.config is None:
            return None
        try:
            v = OmegaConf.select(self.config, key, throw_on_resolution_failure=True)
        except Exception:  # ${hydra:...} and friends: only known inside the job
            v = OmegaConf.select(self.config, key, throw_on_resolution_failure=False)
        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=False)
        return v


def _natural_key(p: Path) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", p.name) if t)


def is_job_dir(d: Path) -> bool:
    return (d / METRICS_FILE).is_file() or (d / ".hydra" / "overrides.yaml").is_file()


def find_job_dirs(root: str | Path) -> list[Path]:
    """Job directories under ``root`` (``root`` itself when it is one run), in natural order."""
    root = Path(root)
    if is_job_dir(root):
        return [root]
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        for child in sorted((c for c in d.iterdir() if c.is_dir()), key=_natural_key):
            if child.name.startswith(".") or child.name in _SKIP_DIRS or ".stale" in child.name:
                continue
            if is_job_dir(child):
                found.append(child)
            else:
                walk(child, depth + 1)

    walk(root, 1)
    return found


def first_error_line(path: Path) -> str:
    """The gist of an ``error.txt``: a user error's one line, or a traceback's last exception line."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    body = lines[1:] or lines  # line 1 names the job and its overrides
    exceptions = [ln for ln in body if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*", ln)]
    return (exceptions or body or ["failed"])[-1]


def read_job(path: str | Path, name: str | None = None) -> Job:
    path = Path(path)
    hydra_dir = path / ".hydra"
    overrides: list[str] = []
    if (hydra_dir / "overrides.yaml").is_file():
        overrides = [str(o) for o in yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []]
    config = OmegaConf.load(hydra_dir / "config.yaml") if (hydra_dir / "config.yaml").is_file() else None
    metrics, error = None, ""
    if (path / METRICS_FILE).is_file():
        try:
            loaded = json.loads((path / METRICS_FILE).read_text())
            metrics = loaded if isinstance(loaded, dict) else None
            error = "" if metrics is not None else "metrics.json is not a JSON object"
        except (OSError, ValueError) as e:
            error = f"unreadable metrics.json ({e})"
    if metrics is not None:
        status = str(metrics.get("status", "ok"))
    elif (path / ERROR_FILE).is_file():
        status, error = FAILED, first_error_line(path / ERROR_FILE)
    else:
        status, error = MISSING, error or "no metrics.json"
    return Job(path, name or path.name, overrides, config, metrics, status, error)


def parse_overrides(overrides: Sequence[str], ignored: tuple[str, ...] = IGNORED_PREFIXES) -> dict[str, Any]:
    """``{key: value}`` of an overrides list, by Hydra's parser (``+k=v`` gives ``k``, a deletion
    ``~k`` gives ``"~"``); keys starting with ``ignored`` are left out; a later key wins, as in
    Hydra."""
    out: dict[str, Any] = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if ignored and key.startswith(ignored):
            continue
        out[key] = "~" if o.is_delete() else o.value()
    return out


def _plain(v: Any) -> Any:
    """A cell value: scalars as they are, lists and dicts as their compact text."""
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v, separators=(",", ":"))
    return v


def jobs_frame(jobs: Sequence[Job]) -> pd.DataFrame:
    """One row per job (see the module docstring)."""
    parsed = [parse_overrides(j.overrides) for j in jobs]
    override_cols: list[str] = []
    for p in parsed:
        override_cols += [k for k in p if k not in override_cols and k not in SEED_KEYS]
    metric_keys: list[str] = []
    for j in jobs:
        metric_keys += [k for k in (j.metrics or {}) if k not in metric_keys]
    fixed = {"job", "path", "status", "error", *override_cols, *SEED_KEYS}

    def col(k: str) -> str:
        return f"metrics.{k}" if k in fixed else k

    rows = []
    for j, p in zip(jobs, parsed):
        row: dict[str, Any] = {"job": j.name, "path": str(j.path), "status": j.status, "error": j.error}
        for k in override_cols:
            v = p.get(k)
            # The config's value, typed and resolved; a group choice (model=egra) keeps its name.
            cv = j.value(k) if k in p and v != "~" else None
            row[k] = _plain(cv if cv is not None and not isinstance(cv, dict) else v)
        for k in SEED_KEYS:
            row[k] = j.value(k) if j.config is not None else p.get(k)
        row.update({col(k): _plain(v) for k, v in (j.metrics or {}).items()})
        rows.append(row)
    columns = ["job", "path", "status", "error", *override_cols, *SEED_KEYS, *[col(k) for k in metric_keys]]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["override_columns"] = list(override_cols)
    return frame


def collect(dirs: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Every job under ``dirs`` as one frame. Job names are paths relative to the directory
    given, prefixed with that directory's name when several are given."""
    roots = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    jobs: list[Job] = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        for d in find_job_dirs(root):
            rel = d.name if d == root else d.relative_to(root).as_posix()
            jobs.append(read_job(d, f"{root.name}/{rel}" if len(roots) > 1 and d != root else rel))
    frame = jobs_frame(jobs)
    cols = frame.attrs["override_columns"]
    if cols and len(frame):
        # Rows in the order of the swept values (a grid "500,3,5" lists 3, 5, 500), not of the jobs.
        frame = frame.sort_values(cols, kind="stable", key=lambda s: s.map(sort_key)).reset_index(drop=True)
        frame.attrs["override_columns"] = cols
    frame.attrs["roots"] = [str(r) for r in roots]
    return frame


def sort_key(v: Any) -> tuple:
    """Numbers by value, then text, then missing values."""
    if v is None or (isinstance(v, float) and v != v):
        return (2, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def expected_override_lists(multirun_dir: str | Path) -> list[list[str]] | None:
    """The jobs' override lists Hydra's basic sweeper expands ``multirun.yaml`` into, or None
    (no ``multirun.yaml``, another sweeper such as Optuna, or overrides it cannot expand)."""
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
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + task)
        return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # an unexpandable sweep only loses the "not started" notes
        return None


def not_started(frame: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(root, overrides) of each job a basic-sweeper multirun under the frame's roots planned
    but that has no directory."""
    out = []
    for root in frame.attrs.get("roots", []):
        expected = expected_override_lists(root)
        if not expected:
            continue
        seen = [read_job(Path(p)).overrides for p in frame["path"] if Path(p).is_relative_to(root)]
        for exp in expected:
            if exp in seen:
                seen.remove(exp)
            else:
                out.append((root, exp))
    return out
