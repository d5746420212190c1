"""The paper's experiments on one dataset in one command (``make reproduce``, ``egra-reproduce``).

A *budget* (``conf/reproduce/<name>.yaml``: ``smoke`` or ``full``) lists what to run:

1. **overall** — every model of ``overall.models`` (``model=<name>``), a model without
   ``conf/model/<name>.yaml`` skipped and reported as such;
2. **ablations** — EGRA and its variants (``label: [overrides]``, the experiment files);
3. **long tail** — per popularity group, EGRA against EGRA without ``S^pt``;
4. **sensitivity** — one parameter at a time over its grid, on ``sensitivity.base``;

each on the budget's seeds, with the dataset's and the command line's overrides. Every run is
an ``egra-train`` job: one Hydra multirun over the missing seeds of each setting, in
``<out>/runs/<section>/<setting>/seed<S>/``, launched in a subprocess (the way ``make
compare`` runs its jobs, :func:`egra.pipeline.compare._train`) or, with a task function from
the entry point, in this process. A run is *keyed by its resolved config*: before launching,
every job's config is composed here, checked (:func:`~egra.pipeline.checks.check_config`) and
hashed (:func:`~egra.pipeline.fingerprint.config_hash`, what ``skip_if_done`` compares inside
the job); a job whose ``metrics.json`` carries that hash is reused, and two settings with the
same config (EGRA in the overall comparison, the ablations and the long tail) share one run.
A killed reproduction re-runs only what is missing or changed.

The report (``<out>/report.md``, ``results.csv``, PNG figures) is written from the jobs'
``metrics.json``; a collapsed run (``status: collapsed``) is counted in the means and flagged,
a failed one (``error.txt``, no metrics) is listed and left out of the means.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from egra.data.synthetic import PRESETS
from egra.pipeline import report as sweep_report
from egra.pipeline.checks import ConfigError, check_config, check_data
from egra.pipeline.compare import _train as train_subprocess
from egra.pipeline.fingerprint import HASH_KEY, config_hash
from egra.pipeline.io import read_json
from egra.pipeline.load import load_data

log = logging.getLogger(__name__)

SECTIONS = ("overall", "ablations", "long_tail", "sensitivity")
TITLES = {
    "overall": "1. Overall comparison",
    "ablations": "2. Ablations",
    "long_tail": "3. Long tail: per popularity group",
    "sensitivity": "4. Sensitivity",
}
OVERALL_METRICS = ("Recall", "NDCG", "Precision", "MAP")
OVERALL_KS = (10, 20, 50)
ABLATION_METRICS = (
    "test/Recall@10",
    "test/Recall@20",
    "test/NDCG@10",
    "test/NDCG@20",
    "test/popgroup0/Recall@20",
)
SENSITIVITY_METRICS = ("test/Recall@20", "test/NDCG@20", "valid/Recall@20")
LONG_TAIL_METRICS = ("Recall@20", "NDCG@20")
BUDGET_KEYS = {
    "dataset",
    "seeds",
    "max_epochs",
    "backbone_epochs",
    "launcher",
    "overrides",
    *SECTIONS,
}
ERROR_FILE = "error.txt"  # what a failed egra-train multirun job leaves (egra.cli.errors)
RESULTS_CSV, REPORT_MD = "results.csv", "report.md"

#: ``(egra-train arguments without "-m", log file) -> exit status`` of one multirun.
Launcher = Callable[[list[str], Path], int]


# --------------------------------------------------------------------------- budget, dataset


def load_budget(conf_dir: str | Path, budget: str) -> DictConfig:
    """``conf/reproduce/<budget>.yaml`` (or a budget file of one's own: a ``.yaml`` path), with
    its keys checked."""
    own = Path(budget)
    path = own if own.suffix in (".yaml", ".yml") else Path(conf_dir) / "reproduce" / f"{budget}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"budget {budget!r}: no {path} (budgets: {', '.join(names) or 'none'})")
    cfg = OmegaConf.load(path)
    unknown = sorted(set(cfg) - BUDGET_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)} (expected {', '.join(sorted(BUDGET_KEYS))})"
        )
    if not cfg.get("seeds"):
        raise ConfigError(f"{path}: seeds: expected a non-empty list of integers")
    if cfg.get("launcher", "subprocess") not in ("subprocess", "in_process"):
        raise ConfigError(f"{path}: launcher={cfg.launcher!r}: expected subprocess or in_process")
    return cfg


def dataset_overrides(conf_dir: str | Path, dataset: str) -> list[str]:
    """A dataset name as ``egra-train`` overrides: a ``conf/data/<name>.yaml`` (``baby``, ...),
    a synthetic preset (``tiny``, ``small``, ``cobuy``; ``synthetic-<preset>`` for one that
    shares its name with a data config, e.g. ``synthetic-baby``), or ``mmrec`` (with
    ``data.root=DIR`` among the overrides)."""
    data_dir = Path(conf_dir) / "data"
    configs = sorted(p.stem for p in data_dir.glob("*.yaml") if p.stem != "synthetic")
    if dataset.startswith("synthetic-") and dataset.split("-", 1)[1] in PRESETS:
        return ["data=synthetic", f"data.preset={dataset.split('-', 1)[1]}"]
    if dataset in configs:
        return [f"data={dataset}"]
    if dataset in PRESETS:
        return ["data=synthetic", f"data.preset={dataset}"]
    raise ConfigError(
        f"dataset {dataset!r}: expected a data config ({', '.join(configs)}), a generated preset "
        f"({', '.join(sorted(PRESETS))}, or synthetic-<preset>), or DATASET=mmrec ARGS='data.root=DIR'"
    )


def dataset_label(dataset: str, overrides: Sequence[str]) -> str:
    """The report's name for the data: the folder of a ``data.root=DIR`` override, else the
    ``data=<name>`` (and ``data.preset=<p>``) of the overrides, else ``dataset``."""
    values = {o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1].strip("'\"") for o in overrides if "=" in o}
    if "data.root" in values:
        return Path(values["data.root"]).name
    if values.get("data") == "synthetic":
        return values.get("data.preset", "synthetic")
    if "data" in values:
        return values["data"]
    if "data.preset" in values and dataset in PRESETS:
        return values["data.preset"]
    return dataset


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Setting:
    """One row of one section: its overrides (besides the common ones and the seed)."""

    section: str
    label: str
    overrides: tuple[str, ...]
    param: str | None = None  # sensitivity: the swept key
    value: Any = None  # sensitivity: its value

    @property
    def slug(self) -> str:
        # No "=" or spaces: the directory goes into a Hydra override (hydra.sweep.dir=...).
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_") or "run"


@dataclass
class Run:
    """One setting on one seed: the job that holds (or will hold) its result."""

    setting: Setting
    seed: int
    job_dir: Path
    config_hash: str
    model: str
    shared_with: str | None = None  # the setting whose identical job this run reuses
    status: str = "missing"  # ok | collapsed | failed | missing
    ran: bool = False  # trained in this invocation
    metrics: dict[str, Any] | None = None
    error: str | None = None
    cfg: DictConfig | None = field(default=None, repr=False)  # the composed job config
    log: Path | None = None  # the log of its launch in this invocation


@dataclass
class Plan:
    out: Path
    common: list[str]
    seeds: list[int]
    runs: list[Run] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # models without a config file

    def skipped_lines(self) -> list[str]:
        return [f"overall: {m} skipped (no conf/model/{m}.yaml)" for m in self.skipped]

    def unique(self) -> list[Run]:
        """One run per job directory (the first setting that planned it)."""
        seen: dict[Path, Run] = {}
        for r in self.runs:
            seen.setdefault(r.job_dir, r)
        return list(seen.values())


def settings(budget: DictConfig, conf_dir: str | Path) -> tuple[list[Setting], list[str]]:
    """The budget's settings in report order, and the models skipped for lack of a config file."""
    out: list[Setting] = []
    skipped: list[str] = []
    overall = budget.get("overall") or {}
    for name in overall.get("models") or []:
        if not (Path(conf_dir) / "model" / f"{name}.yaml").is_file():
            skipped.append(str(name))
            continue
        out.append(Setting("overall", str(name), (f"model={name}",)))
    for section in ("ablations", "long_tail"):
        for label, ovr in (budget.get(section) or {}).items():
            out.append(Setting(section, str(label), tuple(str(o) for o in ovr)))
    sens = budget.get("sensitivity") or {}
    for param, values in (sens.get("grids") or {}).items():
        for v in values:
            label = f"{param.rsplit('.', 1)[-1]}={v}"
            out.append(
                Setting("sensitivity", label, (*map(str, sens.get("base") or []), f"{param}={v}"), param, v)
            )
    return out, skipped


def _seeds_of(budget: DictConfig, setting: Setting) -> list[int]:
    if setting.section == "sensitivity":
        own = (budget.get("sensitivity") or {}).get("seeds")
        if own:
            return [int(s) for s in own]
    return [int(s) for s in budget.seeds]


def _trained_backbones(conf_dir: str | Path) -> list[str]:
    """The backbones the pipeline trains (``kind: trained`` in conf/backbones/default.yaml): the
    ones a budget's ``backbone_epochs`` caps, whichever models a branch adds."""
    raw = OmegaConf.load(Path(conf_dir) / "backbones" / "default.yaml")
    return [k for k, v in raw.items() if isinstance(v, DictConfig) and v.get("kind") == "trained"]


def common_overrides(
    budget: DictConfig, dataset: str, conf_dir: str | Path, extra: Sequence[str]
) -> list[str]:
    """Every job's overrides: the dataset, the budget's caps and overrides, then ``extra``."""
    extra = list(extra)
    has_data = any(o.split("=", 1)[0].lstrip("+") == "data" for o in extra)
    out = [] if has_data else dataset_overrides(conf_dir, dataset)
    if budget.get("max_epochs") is not None:
        out.append(f"trainer.max_epochs={int(budget.max_epochs)}")
    if budget.get("backbone_epochs") is not None:
        out += [
            f"backbones.{b}.max_epochs={int(budget.backbone_epochs)}" for b in _trained_backbones(conf_dir)
        ]
    return [*out, *map(str, budget.get("overrides") or []), *extra]


def _compose(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)  # what ${hydra:runtime.output_dir} is in the job
    return cfg


def _model_name(cfg: DictConfig) -> str:
    return str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]


def plan(
    budget: DictConfig,
    dataset: str,
    conf_dir: str | Path,
    extra: Sequence[str] = (),
    out: str | Path | None = None,
    budget_name: str = "budget",
) -> tuple[Plan, DictConfig]:
    """Compose, check and hash every job (inside an initialised Hydra, e.g.
    ``initialize_config_dir``); runs of identical configs share a job. Returns the plan and one
    composed job config (for the data check)."""
    common = common_overrides(budget, dataset, conf_dir, extra)
    found, skipped = settings(budget, conf_dir)
    if not found:
        raise ConfigError(f"budget {budget_name!r} lists no runs")
    # One composition per setting (Hydra's compose is the slow part of planning); its seeds
    # differ only in `seed`, which the rest of the config reads by interpolation.
    composed = []
    for s in found:
        try:
            cfg = _compose([*common, *s.overrides, f"seed={_seeds_of(budget, s)[0]}"], Path("."))
            if OmegaConf.is_missing(cfg.data, "root"):
                raise ConfigError("data.root: required with data=mmrec (ARGS='data=mmrec data.root=DIR')")
            check_config(cfg)
        except (ConfigError, HydraException, OmegaConfBaseException) as e:
            # Hydra's own message names the override it could not apply.
            raise ConfigError(f"{s.section} / {s.label}: {' '.join(str(e).split())}") from None
        composed.append(cfg)
    label = dataset_label(dataset, extra)
    root = (
        Path(out)
        if out is not None
        else Path(composed[0].paths.log_dir) / "reproduce" / f"{label}-{budget_name}"
    )
    p = Plan(root.resolve(), common, [int(s) for s in budget.seeds], skipped=skipped)
    by_hash: dict[str, Run] = {}
    for s, setting_cfg in zip(found, composed):
        for seed in _seeds_of(budget, s):
            job_dir = p.out / "runs" / s.section / s.slug / f"seed{seed}"
            cfg = copy.deepcopy(setting_cfg)
            with open_dict(cfg):
                cfg.seed = seed
                cfg.paths.output_dir = str(job_dir)
            h = config_hash(cfg)
            first = by_hash.get(h)
            if first is not None:
                shared = f"{first.setting.section} / {first.setting.label}"
                p.runs.append(Run(s, seed, first.job_dir, h, first.model, shared_with=shared))
            else:
                by_hash[h] = run = Run(s, seed, job_dir, h, _model_name(cfg), cfg=cfg)
                p.runs.append(run)
    return p, composed[0]


def refresh(p: Plan) -> None:
    """Each run's status from its job directory: ``metrics.json`` of the planned config (ok or
    collapsed), ``error.txt`` (failed), or nothing yet (missing)."""
    for r in p.runs:
        r.metrics, r.error = None, None
        mpath = r.job_dir / "metrics.json"
        metrics = None
        if mpath.is_file():
            try:
                metrics = read_json(mpath)
            except (OSError, ValueError):
                metrics = None
        if isinstance(metrics, dict) and metrics.get(HASH_KEY) == r.config_hash:
            r.metrics = metrics
            r.status = "collapsed" if metrics.get("status") == "collapsed" else "ok"
        elif (r.job_dir / ERROR_FILE).is_file():
            r.status = "failed"
            r.error = _first_error_line(r.job_dir / ERROR_FILE)
        else:
            r.status = "missing"
            if r.log is not None:  # launched, yet no result and no error.txt: Hydra's own failure
                r.error = f"no metrics.json after its launch, see {r.log}"


def _first_error_line(path: Path) -> str:
    """The gist of an ``error.txt``: a user error's one line, or a traceback's last exception line."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    body = lines[1:] or lines  # line 1 names the job and its overrides
    exceptions = [ln for ln in body if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*", ln)]
    return (exceptions or body or ["failed"])[-1]


# --------------------------------------------------------------------------- launching


def subprocess_launcher(args: list[str], log_file: Path) -> int:
    """One ``python -m egra.train -m <args>`` (compare's job runner); its exit status."""
    try:
        train_subprocess(["-m", *args], log_file)
    except subprocess.CalledProcessError as e:
        return e.returncode
    return 0


def in_process_launcher(task_function: Callable[[DictConfig], Any]) -> Launcher:
    """A launcher running Hydra's multirun in this process with ``task_function`` (egra-train's),
    inside an initialised Hydra; stdout, stderr and log records go to the log file."""

    def launch(args: list[str], log_file: Path) -> int:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        status = 0
        with open(log_file, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                GlobalHydra.instance().hydra.multirun(
                    config_name="train",
                    task_function=task_function,
                    # What `-m` sets on the command line: egra-train then records a failed job
                    # (error.txt) and goes on instead of raising.
                    overrides=[*args, "hydra.mode=MULTIRUN"],
                    with_log_configuration=False,
                )
            except SystemExit as e:  # egra-train's sweep status: 4 when a job failed
                status = e.code if isinstance(e.code, int) else 1
            except Exception:  # a sweep Hydra could not start: its jobs stay missing
                traceback.print_exc(file=fh)
                status = 1
            finally:
                HydraConfig.instance().cfg = None
                # Hydra's job logging points the root logger at this job's files: restore ours.
                for h in list(root.handlers):
                    if h not in handlers:
                        root.removeHandler(h)
                        h.close()
                for h in handlers:
                    if h not in root.handlers:
                        root.addHandler(h)
                root.setLevel(level)
        return status

    return launch


def launch_missing(p: Plan, launcher: Launcher, echo: Callable[[str], None] = print) -> int:
    """One multirun per setting with missing runs (over its missing seeds); returns the number
    of jobs launched."""
    todo: dict[Path, list[Run]] = {}
    for r in p.unique():
        if r.status in ("missing", "failed"):
            todo.setdefault(r.job_dir.parent, []).append(r)
    launched = 0
    for i, (sweep, runs) in enumerate(todo.items(), 1):
        s = runs[0].setting
        seeds = sorted({r.seed for r in runs})
        echo(f"[{i}/{len(todo)}] {s.section} / {s.label}: seed {','.join(map(str, seeds))} ...")
        t0 = time.perf_counter()
        args = [
            *p.common,
            *s.overrides,
            "seed=" + ",".join(map(str, seeds)),
            f"hydra.sweep.dir='{sweep}'",  # quoted: a path may hold spaces or "="
            "hydra.sweep.subdir=seed${seed}",
        ]
        log_file = p.out / "logs" / f"{s.section}__{s.slug}.log"
        for r in runs:
            r.log = log_file
        status = launcher(args, log_file)
        launched += len(seeds)
        echo(
            f"      done in {time.perf_counter() - t0:.1f}s" + (f" (exit status {status})" if status else "")
        )
    return launched


# --------------------------------------------------------------------------- tables


def results_frame(p: Plan) -> pd.DataFrame:
    """One row per run: experiment, setting, model, seed, status, seconds, ..., then metrics."""
    metric_keys: list[str] = []
    for r in p.runs:
        metric_keys += [
            k
            for k in (r.metrics or {})
            if "/" in k and k not in metric_keys and not k.startswith("backbone/")
        ]
    metric_keys = sorted(metric_keys)
    rows = []
    for r in p.runs:
        m = r.metrics or {}
        row = {
            "experiment": r.setting.section,
            "setting": r.setting.label,
            "model": r.model,
            "seed": r.seed,
            "status": r.status,
            "seconds": m.get("wall_time_s"),
            "ran": r.ran,
            "shared_with": r.shared_with or "",
            "job_dir": str(r.job_dir.relative_to(p.out))
            if r.job_dir.is_relative_to(p.out)
            else str(r.job_dir),
            "error": r.error or "",
            "config_hash": r.config_hash,
        }
        row.update({k: m.get(k) for k in metric_keys})
        rows.append(row)
    for name, line in zip(p.skipped, p.skipped_lines()):
        rows.append(
            {"experiment": "overall", "setting": name, "model": name, "status": "skipped", "error": line}
        )
    cols = [
        "experiment",
        "setting",
        "model",
        "seed",
        "status",
        "seconds",
        "ran",
        "shared_with",
        "job_dir",
        "error",
        "config_hash",
        *metric_keys,
    ]
    frame = pd.DataFrame(rows, columns=cols)
    frame["seed"] = frame["seed"].astype("Int64")  # a skipped model's row has none
    return frame


def _runs_text(statuses: Sequence[str]) -> str:
    counts = {s: list(statuses).count(s) for s in ("ok", "collapsed", "failed", "missing")}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"


def summary(
    frame: pd.DataFrame, section: str, metrics: Sequence[str], key: str = "setting", shown: str | None = None
) -> pd.DataFrame:
    """Mean ± std over seeds per setting of ``section`` (runs with metrics: ok and collapsed), in
    the shape :func:`egra.pipeline.report.markdown_table` prints (``runs`` = status counts).
    Rows are labelled by ``key``, or by the first value of column ``shown`` in each group."""
    part = frame[frame["experiment"] == section]
    metrics = [m for m in metrics if m in part.columns]
    rows = []
    for label in dict.fromkeys(part[key].tolist()):
        g = part[part[key] == label]
        done = g[g["status"].isin(["ok", "collapsed"])]
        name = g[shown].iloc[0] if shown else label
        row: dict[str, Any] = {shown or key: name, "runs": _runs_text(g["status"].tolist())}
        for m in metrics:
            x = pd.to_numeric(done[m], errors="coerce").dropna()
            row[f"{m} mean"] = float(x.mean()) if len(x) else math.nan
            row[f"{m} std"] = float(x.std(ddof=1)) if len(x) > 1 else math.nan
        row["seeds"] = len(done)
        rows.append(row)
    head = shown or key
    out = pd.DataFrame(
        rows, columns=[head, "runs", *[f"{m} {s}" for m in metrics for s in ("mean", "std")], "seeds"]
    )
    out.attrs["by"], out.attrs["metrics"] = [head, "runs"], list(metrics)
    return out


def _plot_frame(frame: pd.DataFrame, section: str, override_cols: Sequence[str]) -> pd.DataFrame:
    """Rows of ``section`` with metrics, as :mod:`egra.pipeline.report`'s plots read them
    (``status`` ok for ok and collapsed runs; ``override_columns`` = the setting and the seed)."""
    part = frame[(frame["experiment"] == section) & frame["status"].isin(["ok", "collapsed"])].copy()
    part["status"] = "ok"
    part.attrs["override_columns"] = list(override_cols)
    return part


def _table(summary_frame: pd.DataFrame) -> str:
    if summary_frame.empty:
        return "(no run)"
    text = sweep_report.markdown_table(summary_frame)
    # markdown_table labels the metrics by their keys: drop the common test/ prefix.
    head, rest = text.split("\n", 1)
    return head.replace("test/", "") + "\n" + rest


def long_tail_markdown(frame: pd.DataFrame, metric: str) -> str:
    lt = _plot_frame(frame, "long_tail", ["setting", "seed"])
    if lt.empty:
        return "(no run)"
    table = sweep_report.long_tail_table(lt, metric)
    groups = sweep_report.long_tail_groups(lt, metric)
    if not groups:
        return f"(no test/popgroup<g>/{metric} in the metrics)"
    lines = [
        "| setting | " + " | ".join(f"g{g}" for g in groups) + " |",
        "|---|" + "---:|" * len(groups),
    ]
    seeds = lt.groupby("setting", sort=False).size()
    for _, row in table.iterrows():
        label = str(row["config"]).removeprefix("setting=")
        one = seeds.get(label, 0) < 2  # no std from one seed (long_tail_table gives 0)
        cells = [
            sweep_report.format_mean_std(row[f"g{g} mean"], math.nan if one else row[f"g{g} std"])
            for g in groups
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(p: Plan, title: str, command: str = "") -> list[Path]:
    """``results.csv``, ``report.md`` and the PNG figures in ``p.out``; the files written."""
    p.out.mkdir(parents=True, exist_ok=True)
    frame = results_frame(p)
    frame.to_csv(p.out / RESULTS_CSV, index=False)
    files = [p.out / RESULTS_CSV, p.out / REPORT_MD]
    statuses = [r.status for r in p.unique()]
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        f"Seeds: {', '.join(map(str, p.seeds))} (training seed; the data split is fixed). "
        f"Jobs: {len(p.unique())} ({_runs_text(statuses)}); every run's directory is under `runs/`, "
        "all rows in `results.csv`. Mean ± sample std over seeds; best mean per column in bold. "
        "Collapsed runs (`status: collapsed`, stopped by the collapse guard and evaluated at their "
        "best-valid epoch) count in the means; failed runs do not.",
        "",
        "Common overrides: " + " ".join(f"`{o}`" for o in p.common),
        "",
    ]
    if p.skipped:
        lines += [*[f"- {s}" for s in p.skipped_lines()], ""]
    bad = [r for r in p.unique() if r.status in ("failed", "missing", "collapsed")]
    if bad:
        lines += ["Runs that did not finish normally:", ""]
        for r in bad:
            why = r.error or (r.metrics or {}).get("collapse") or ""
            lines.append(
                f"- {r.status}: {r.setting.section} / {r.setting.label}, seed {r.seed} "
                f"(`{r.job_dir.relative_to(p.out)}`){': ' + str(why) if why else ''}"
            )
        lines.append("")

    overall_metrics = [f"test/{m}@{k}" for m in OVERALL_METRICS for k in OVERALL_KS]
    lines += [f"## {TITLES['overall']}", "", "Full ranking, test split, at the best-valid epoch.", ""]
    lines += [
        _table(summary(frame[frame["status"] != "skipped"], "overall", overall_metrics, shown="model")),
        "",
    ]
    lines += [f"## {TITLES['ablations']}", ""]
    lines += [_table(summary(frame, "ablations", ABLATION_METRICS)), ""]

    lines += [f"## {TITLES['long_tail']}", ""]
    lines += [
        "Items in popularity groups of equal total train interactions (g0 = least popular); test "
        "metrics of each group's held-out items.",
        "",
    ]
    for m in LONG_TAIL_METRICS:
        lines += [f"Test {m}:", "", long_tail_markdown(frame, m), ""]
    lt = _plot_frame(frame, "long_tail", ["setting", "seed"])
    if not lt.empty and sweep_report.long_tail_groups(lt, "Recall@20"):
        path = p.out / "long_tail.png"
        sweep_report.plot_long_tail(lt, path)
        files.append(path)
        lines += [f"![long tail]({path.name})", ""]

    lines += [f"## {TITLES['sensitivity']}", ""]
    sens = frame[frame["experiment"] == "sensitivity"]
    params = list(dict.fromkeys(r.setting.param for r in p.runs if r.setting.section == "sensitivity"))
    for param in params:
        rows = [r for r in p.runs if r.setting.param == param]
        part = sens[sens["setting"].isin({r.setting.label for r in rows})].copy()
        part[param] = part["setting"].map({r.setting.label: r.setting.value for r in rows})
        lines += [f"### {param}", ""]
        lines += [_table(summary(part, "sensitivity", SENSITIVITY_METRICS, key=param)), ""]
        pf = _plot_frame(part, "sensitivity", [param, "seed"])
        if not pf.empty and pf[param].nunique() > 1:
            path = p.out / f"sensitivity_{sweep_report._safe_name(param)}.png"
            sweep_report.plot_sensitivity(
                pf, param, path, [m for m in SENSITIVITY_METRICS if m in pf.columns]
            )
            files.append(path)
            lines += [f"![{param}]({path.name})", ""]
    (p.out / REPORT_MD).write_text("\n".join(lines))
    return files


# --------------------------------------------------------------------------- the command


@dataclass
class Outcome:
    """What :func:`reproduce` did: the plan (runs with their status), jobs launched, files."""

    plan: Plan
    launched: int
    files: list[Path]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.plan.unique() if r.status in ("failed", "missing")]


def reproduce(
    budget: str,
    conf_dir: str | Path,
    dataset: str | None = None,
    extra: Sequence[str] = (),
    out: str | Path | None = None,
    task_function: Callable[[DictConfig], Any] | None = None,
    echo: Callable[[str], None] = print,
    command: str = "",
    launcher: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Run (or reuse) every job of ``conf/reproduce/<budget>.yaml`` on ``dataset`` and write the
    report. ``launcher`` (``subprocess`` | ``in_process``) replaces the budget's; ``in_process``
    needs ``task_function`` (egra-train's, from the entry point), without which every job is
    launched in a subprocess. ``dry_run``: plan and print what would run; nothing runs or is written."""
    cfg = load_budget(conf_dir, budget)
    dataset = dataset or str(cfg.get("dataset") or "tiny")
    with initialize_config_dir(
        config_dir=str(Path(conf_dir).resolve()), version_base="1.3", job_name="train"
    ):
        p, base = plan(cfg, dataset, conf_dir, extra, out, Path(budget).stem)
        refresh(p)
        todo = [r for r in p.unique() if r.status != "ok" and r.status != "collapsed"]
        for line in p.skipped_lines():
            echo(line)
        echo(
            f"reproduce {budget} on {dataset_label(dataset, extra)}: {len(p.unique())} jobs "
            f"({len(p.unique()) - len(todo)} done, {len(todo)} to run) -> {p.out}"
        )
        launched = 0
        if dry_run:
            for r in todo:
                echo(f"  would run: {r.setting.section} / {r.setting.label}, seed {r.seed} -> {r.job_dir}")
            return Outcome(p, 0, [])
        if todo:
            _check_data(p, base)
            how = launcher or cfg.get("launcher", "subprocess")
            if how not in ("subprocess", "in_process"):
                raise ConfigError(f"launcher={how!r}: expected subprocess or in_process")
            use_in_process = how == "in_process" and task_function is not None
            launcher = in_process_launcher(task_function) if use_in_process else subprocess_launcher
            launched = launch_missing(p, launcher, echo)
            refresh(p)
            ran = {r.job_dir for r in todo}
            for r in p.runs:
                r.ran = r.job_dir in ran and r.status in ("ok", "collapsed")
            _check_hashes(p)
    title = (
        f"Reproduction of the EGRA paper's experiments: `{dataset_label(dataset, extra)}`, budget `{budget}`"
    )
    files = write_report(p, title, command)
    return Outcome(p, launched, files)


def _check_data(p: Plan, base: DictConfig) -> None:
    """Read the dataset once and run each job's data checks before any training."""
    with contextlib.redirect_stdout(io.StringIO()):
        dm = load_data(base)
    for r in p.unique():
        if r.status not in ("ok", "collapsed") and r.cfg is not None:
            check_data(r.cfg, dm)


def _check_hashes(p: Plan) -> None:
    """A finished job whose config differs from the one planned here would be re-run forever."""
    for r in p.unique():
        mpath = r.job_dir / "metrics.json"
        if r.status == "missing" and mpath.is_file():
            got = (read_json(mpath) or {}).get(HASH_KEY)
            r.status, r.error = "failed", f"its metrics.json has config hash {got}, planned {r.config_hash}"
            print(f"reproduce: {r.job_dir}: {r.error}", file=sys.stderr)
