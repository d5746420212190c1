"""``make reproduce`` / ``egra-reproduce``: the paper's experiments on one dataset, one report.

A *budget* (``conf/study/budget/<name>.yaml``: ``smoke`` or ``full``, selected by
``budget=<name>`` and checked against :class:`ReproduceConfig`) lists what to run:

1. **overall** — every model of ``overall.models`` (``model=<name>``), a model without
   ``conf/model/<name>.yaml`` skipped and reported as such;
2. **ablations** — EGRA and its variants (``label: [overrides]``, the experiment files);
3. **long tail** — per popularity group, EGRA against EGRA without ``S^pt``;
4. **sensitivity** — one parameter at a time over its grid, on ``sensitivity.base``;

each on the budget's seeds. Every run is an ``egra-train`` job launched by
:func:`egra.experiments.launch.train` (one multirun over the missing seeds of each setting, in
``<out>/runs/<section>/<setting>/seed<S>/``). A run is *keyed by its resolved config*: before
launching, every job's config is composed here, checked and hashed (what ``skip_if_done``
compares inside the job); a job whose ``metrics.json`` carries that hash is reused, and two
settings with the same config (EGRA in the overall comparison, the ablations and the long tail)
share one run. A killed reproduction re-runs only what is missing or changed.

The report (``report.md``, ``results.csv``, PNG figures) aggregates the jobs by the one rule of
:mod:`egra.experiments.aggregate` (collapsed runs count and are flagged; failed ones are listed).
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from egra.data import DataError
from egra.experiments import launch, render
from egra.experiments.aggregate import summarize
from egra.experiments.collect import FAILED, MISSING, read_job
from egra.experiments.study import data_overrides, dataset_label, load_config, slug
from egra.pipeline.checks import ConfigError, check_config, check_data
from egra.pipeline.fingerprint import HASH_KEY, config_hash
from egra.pipeline.load import load_data

SECTIONS = ("overall", "ablations", "long_tail", "sensitivity")
TITLES = {
    "overall": "1. Overall comparison",
    "ablations": "2. Ablations",
    "long_tail": "3. Long tail: per popularity group",
    "sensitivity": "4. Sensitivity",
}
OVERALL_METRICS = tuple(f"test/{m}@{k}" for m in ("Recall", "NDCG", "Precision", "MAP") for k in (10, 20, 50))
ABLATION_METRICS = (
    "test/Recall@10",
    "test/Recall@20",
    "test/NDCG@10",
    "test/NDCG@20",
    "test/popgroup0/Recall@20",
)
SENSITIVITY_METRICS = ("test/Recall@20", "test/NDCG@20", "valid/Recall@20")
RESULTS_CSV, REPORT_MD = "results.csv", "report.md"


@dataclass
class Overall:
    models: list[str] = field(default_factory=list)


@dataclass
class Sensitivity:
    base: list[str] = field(default_factory=list)
    seeds: list[int] | None = None  # null: the budget's seeds
    grids: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class ReproduceConfig:
    budget: str = "smoke"  # the name of the budget file (set by the file itself)
    dataset: str = "tiny"
    seeds: list[int] = field(default_factory=lambda: [0])
    max_epochs: int | None = None
    backbone_epochs: int | None = None
    launcher: str = "subprocess"  # subprocess | in_process
    overrides: list[str] = field(default_factory=list)
    overall: Overall = field(default_factory=Overall)
    ablations: dict[str, list[str]] = field(default_factory=dict)
    long_tail: dict[str, list[str]] = field(default_factory=dict)
    sensitivity: Sensitivity = field(default_factory=Sensitivity)
    out: str | None = None
    dry_run: bool = False


def load(
    conf_dir: str | Path, overrides: Sequence[str] = (), train_overrides: Sequence[str] = ()
) -> DictConfig:
    cfg = load_config(conf_dir, "reproduce", overrides, ReproduceConfig, train_overrides)
    if not cfg.seeds:
        raise ConfigError("reproduce: seeds: expected a non-empty list of integers")
    if cfg.launcher not in ("subprocess", "in_process"):
        raise ConfigError(f"reproduce: launcher={cfg.launcher!r}: expected subprocess or in_process")
    return cfg


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
        return slug(self.label)


@dataclass
class Run:
    """One setting on one seed: the job that holds (or will hold) its result."""

    setting: Setting
    seed: int
    job_dir: Path
    config_hash: str
    model: str
    shared_with: str | None = None  # the setting whose identical job this run reuses
    status: str = MISSING
    ran: bool = False  # trained in this invocation
    metrics: dict[str, Any] | None = None
    error: str = ""
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
    for name in budget.overall.models:
        if not (Path(conf_dir) / "model" / f"{name}.yaml").is_file():
            skipped.append(str(name))
            continue
        out.append(Setting("overall", str(name), (f"model={name}",)))
    for section in ("ablations", "long_tail"):
        for label, ovr in budget[section].items():
            out.append(Setting(section, str(label), tuple(str(o) for o in ovr)))
    sens = budget.sensitivity
    for param, values in sens.grids.items():
        for v in values:
            label = f"{param.rsplit('.', 1)[-1]}={v}"
            out.append(Setting("sensitivity", label, (*map(str, sens.base), f"{param}={v}"), param, v))
    return out, skipped


def _seeds_of(budget: DictConfig, setting: Setting) -> list[int]:
    if setting.section == "sensitivity" and budget.sensitivity.seeds:
        return [int(s) for s in budget.sensitivity.seeds]
    return [int(s) for s in budget.seeds]


def trained_backbones(conf_dir: str | Path) -> list[str]:
    """The backbones the pipeline trains (``kind: trained`` in conf/backbones/default.yaml): the
    ones a budget's ``backbone_epochs`` caps, whichever models are added."""
    raw = OmegaConf.load(Path(conf_dir) / "backbones" / "default.yaml")
    return [k for k, v in raw.items() if isinstance(v, DictConfig) and v.get("kind") == "trained"]


def common_overrides(budget: DictConfig, conf_dir: str | Path) -> list[str]:
    """Every job's overrides: the dataset, the budget's caps, then its overrides (the command
    line's ``--`` part is already appended to them)."""
    extra = list(budget.overrides)
    out = data_overrides(conf_dir, budget.dataset, extra)
    if budget.max_epochs is not None:
        out.append(f"trainer.max_epochs={int(budget.max_epochs)}")
    if budget.backbone_epochs is not None:
        out += [
            f"backbones.{b}.max_epochs={int(budget.backbone_epochs)}" for b in trained_backbones(conf_dir)
        ]
    return [*out, *extra]


def _compose(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)  # what ${hydra:runtime.output_dir} is in the job
    return cfg


def _model_name(cfg: DictConfig) -> str:
    return str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]


def label_of(budget: DictConfig) -> str:
    return dataset_label(budget.dataset, list(budget.overrides))


def plan(budget: DictConfig, conf_dir: str | Path) -> tuple[Plan, DictConfig]:
    """Compose, check and hash every job (inside an initialised Hydra, e.g.
    ``initialize_config_dir``); runs of identical configs share a job. Returns the plan and one
    composed job config (for the data check)."""
    common = common_overrides(budget, conf_dir)
    found, skipped = settings(budget, conf_dir)
    if not found:
        raise ConfigError(f"budget {budget.budget!r} lists no runs")
    # One composition per setting (Hydra's compose is the slow part of planning); its seeds
    # differ only in `seed`, which the rest of the config reads by interpolation.
    composed = []
    for s in found:
        try:
            cfg = _compose([*common, *s.overrides, f"seed={_seeds_of(budget, s)[0]}"], Path("."))
            if OmegaConf.is_missing(cfg.data, "root"):
                raise ConfigError("data.root: required with data=mmrec (-- data=mmrec data.root=DIR)")
            check_config(cfg)
        except (ConfigError, HydraException, OmegaConfBaseException) as e:
            # Hydra's own message names the override it could not apply.
            raise ConfigError(f"{s.section} / {s.label}: {' '.join(str(e).split())}") from None
        composed.append(cfg)
    root = (
        Path(budget.out)
        if budget.out
        else Path(composed[0].paths.log_dir) / "reproduce" / f"{label_of(budget)}-{budget.budget}"
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
    """Each run's status from its job directory: results of the planned config (``ok`` or what a
    guard recorded), ``failed`` (``error.txt``), or ``missing``."""
    for r in p.runs:
        job = read_job(r.job_dir)
        r.metrics, r.error = None, ""
        if job.metrics is not None and job.metrics.get(HASH_KEY) == r.config_hash:
            r.metrics, r.status = job.metrics, job.status
        elif job.status == FAILED:
            r.status, r.error = FAILED, job.error
        else:
            r.status = MISSING
            if r.log is not None:  # launched, yet no result and no error.txt: Hydra's own failure
                r.error = f"no metrics.json after its launch, see {r.log}"


def launch_missing(
    p: Plan, task_function: launch.TaskFunction | None, echo: Callable[[str], None] = print
) -> int:
    """One multirun per setting with missing runs (over its missing seeds); returns the number
    of jobs launched."""
    todo: dict[Path, list[Run]] = {}
    for r in p.unique():
        if r.status in (MISSING, FAILED):
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
        status = launch.train(args, log_file, multirun=True, task_function=task_function)
        launched += len(seeds)
        echo(
            f"      done in {time.perf_counter() - t0:.1f}s" + (f" (exit status {status})" if status else "")
        )
    return launched


# --------------------------------------------------------------------------- the report


def results_frame(p: Plan) -> pd.DataFrame:
    """One row per run: experiment, setting, model, seed, status, seconds, ..., then metrics."""
    metric_keys = sorted(
        {k for r in p.runs for k in (r.metrics or {}) if "/" in k and not k.startswith("backbone/")}
    )
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
            "job": str(r.job_dir.relative_to(p.out)) if r.job_dir.is_relative_to(p.out) else str(r.job_dir),
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
        "experiment", "setting", "model", "seed", "status", "seconds", "ran",
        "shared_with", "job", "error", "config_hash", *metric_keys,
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=cols)
    frame["seed"] = frame["seed"].astype("Int64")  # a skipped model's row has none
    return frame


def _section(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame[(frame["experiment"] == name) & (frame["status"] != "skipped")]


def _table(frame: pd.DataFrame, metrics: Sequence[str], by: str = "setting") -> str:
    if frame.empty:
        return "(no run)"
    text = render.summary_table(summarize(frame, metrics, [by]))
    head, rest = text.split("\n", 1)
    return head.replace("test/", "") + "\n" + rest  # the common split prefix, once


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
    from egra.experiments.aggregate import status_counts

    lines += [
        f"Seeds: {', '.join(map(str, p.seeds))} (training seed; the data split is fixed). "
        f"Jobs: {len(p.unique())} ({status_counts(statuses)}); every run's directory is under `runs/`, "
        "all rows in `results.csv`. Mean ± sample std over seeds (no ± with one seed); best mean per "
        "column in bold. Runs a guard stopped (`collapsed`) count in the means and are flagged; "
        "failed runs do not count.",
        "",
        "Common overrides: " + " ".join(f"`{o}`" for o in p.common),
        "",
    ]
    if p.skipped:
        lines += [*[f"- {s}" for s in p.skipped_lines()], ""]
    bad = [r for r in p.unique() if r.status != "ok"]
    if bad:
        lines += ["Runs that did not finish normally:", ""]
        for r in bad:
            why = r.error or (r.metrics or {}).get("status_reason") or (r.metrics or {}).get("collapse") or ""
            lines.append(
                f"- {r.status}: {r.setting.section} / {r.setting.label}, seed {r.seed} "
                f"(`{r.job_dir.relative_to(p.out)}`){': ' + str(why) if why else ''}"
            )
        lines.append("")

    lines += [f"## {TITLES['overall']}", "", "Full ranking, test split, at the best-valid epoch.", ""]
    lines += [_table(_section(frame, "overall"), OVERALL_METRICS, by="model"), ""]
    lines += [f"## {TITLES['ablations']}", "", _table(_section(frame, "ablations"), ABLATION_METRICS), ""]

    lines += [f"## {TITLES['long_tail']}", ""]
    lines += [
        "Items in popularity groups of equal total train interactions (g0 = least popular); test "
        "metrics of each group's held-out items.",
        "",
    ]
    lt = _section(frame, "long_tail")
    for m in render.LONG_TAIL_METRICS:
        lines += [
            f"Test {m}:",
            "",
            render.long_tail_markdown(lt, m, by=["setting"]) if len(lt) else "(no run)",
            "",
        ]
    if len(lt) and render.long_tail_groups(lt, "Recall@20"):
        path = p.out / "long_tail.png"
        render.plot_long_tail(lt, path, by=["setting"])
        files.append(path)
        lines += [f"![long tail]({path.name})", ""]

    lines += [f"## {TITLES['sensitivity']}", ""]
    sens = _section(frame, "sensitivity")
    params = list(dict.fromkeys(r.setting.param for r in p.runs if r.setting.section == "sensitivity"))
    for param in params:
        rows = [r for r in p.runs if r.setting.param == param]
        part = sens[sens["setting"].isin({r.setting.label for r in rows})].copy()
        part[param] = part["setting"].map({r.setting.label: r.setting.value for r in rows})
        lines += [f"### {param}", "", _table(part, SENSITIVITY_METRICS, by=param), ""]
        part.attrs["override_columns"] = [param]
        if len(part) and part[param].nunique() > 1:
            path = p.out / f"sensitivity_{render.safe_name(param)}.png"
            render.plot_sensitivity(part, param, path, [m for m in SENSITIVITY_METRICS if m in part.columns])
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
        return [r for r in self.plan.unique() if r.status in (FAILED, MISSING)]


def reproduce(
    budget: DictConfig,
    conf_dir: str | Path,
    task_function: launch.TaskFunction | None = None,
    echo: Callable[[str], None] = print,
    command: str = "",
) -> Outcome:
    """Run (or reuse) every job of the budget and write the report. The budget's ``launcher``
    ``in_process`` needs ``task_function`` (egra-train's, from the entry point), without which
    every job runs in a subprocess. ``dry_run``: plan and print what would run; nothing runs or
    is written."""
    with initialize_config_dir(
        config_dir=str(Path(conf_dir).resolve()), version_base="1.3", job_name="train"
    ):
        p, base = plan(budget, conf_dir)
        refresh(p)
        todo = [r for r in p.unique() if r.status in (MISSING, FAILED)]
        for line in p.skipped_lines():
            echo(line)
        echo(
            f"reproduce {budget.budget} on {label_of(budget)}: {len(p.unique())} jobs "
            f"({len(p.unique()) - len(todo)} done, {len(todo)} to run) -> {p.out}"
        )
        launched = 0
        if budget.dry_run:
            for r in todo:
                echo(f"  would run: {r.setting.section} / {r.setting.label}, seed {r.seed} -> {r.job_dir}")
            try:  # what a real run would stop at first: the data (files the user must provide)
                _check_data(p, base)
            except DataError as e:
                echo(f"data: {' '.join(str(e).split())} (a real run would stop here, exit status 3)")
            return Outcome(p, 0, [])
        if todo:
            _check_data(p, base)
            in_process = budget.launcher == "in_process" and task_function is not None
            launched = launch_missing(p, task_function if in_process else None, echo)
            refresh(p)
            ran = {r.job_dir for r in todo}
            for r in p.runs:
                r.ran = r.job_dir in ran and r.status not in (MISSING, FAILED)
            _check_hashes(p)
    title = f"Reproduction of the EGRA paper's experiments: `{label_of(budget)}`, budget `{budget.budget}`"
    return Outcome(p, launched, write_report(p, title, command))


def _check_data(p: Plan, base: DictConfig) -> None:
    """Read the dataset once and run each job's data checks before any training."""
    with contextlib.redirect_stdout(io.StringIO()):
        dm = load_data(base)
    for r in p.unique():
        if r.status in (MISSING, FAILED) and r.cfg is not None:
            check_data(r.cfg, dm)


def _check_hashes(p: Plan) -> None:
    """A finished job whose config differs from the one planned here would be re-run forever."""
    for r in p.unique():
        job = read_job(r.job_dir)
        if r.status == MISSING and job.metrics is not None:
            got = job.metrics.get(HASH_KEY)
            r.status, r.error = FAILED, f"its metrics.json has config hash {got}, planned {r.config_hash}"
            print(f"reproduce: {r.job_dir}: {r.error}", file=sys.stderr)
