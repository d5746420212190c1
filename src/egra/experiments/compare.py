"""``make compare`` / ``egra-compare``: models compared under a protocol fixed before the run.

The protocol (``conf/study/compare.yaml``; docs/experiments.md explains it):

1. **Selection**, on seeds that are never evaluated (``selection_seeds``, default 100). Every
   model gets the same budget: its shipped defaults plus ``trials`` Optuna (TPE) trials of its
   search space (``hparams_search=<search>``), all on the first selection seed; with several
   selection seeds every candidate also runs on the others. The candidate with the best mean
   ``selection_metric`` (valid Recall@20) over the selection seeds is chosen, among candidates
   whose runs all ended ``ok``; a tie goes to the better mean valid NDCG@20, then to the earlier
   candidate (the defaults come first). A model whose ``backbone`` names another model trains
   that backbone with the other model's chosen parameters (EGRA is built on the MGCN it is
   compared with). With one candidate (``trials=0`` or no search space) nothing is selected.
2. **Evaluation**: the chosen configuration of each model on every evaluation seed
   (``eval_seeds``, default 0–4). The data are generated with ``data_seed`` for every run, or
   with the run's own seed when ``vary_data`` is true (a preset's result is then not one draw of
   the generator).
3. **Tests**, of the reference model against each other model, on the primary ``endpoint``
   (fixed before the run, reported first) and the ``secondary`` ones: the two-sided paired
   t-test over evaluation seeds (the seed is the unit), Holm's correction across every p-value
   of the table (raw and adjusted both shown), and, for metrics with per-user values, a 95%
   confidence interval of the difference from a hierarchical bootstrap (seeds, then users within
   each seed).
4. **Compute** beside the scores: trainings, epochs and wall time of each model's evaluation
   runs, pretraining included; ``compute_match=second_seed`` gives every model other than the
   reference a second training per evaluation seed (seed + 1000, the same data) and keeps the
   better one on the selection metric, so a baseline gets as many trainings as EGRA (its MGCN
   backbone and itself).

Every run is an ``egra-train`` job under ``out`` (``select/<model>/...``, ``eval/<model>/seed<S>``);
a re-run resumes: finished jobs whose config is unchanged are reused, a selection made under
other common settings is set aside (``<dir>.staleN``) and redone. ``compare.json`` holds every
number and the protocol; ``compare.md`` renders it (``egra-report <out>`` prints it again).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from egra.experiments import launch, render, stats
from egra.experiments.aggregate import mean_std
from egra.experiments.collect import FAILED, MISSING, collect, parse_overrides, read_job
from egra.experiments.study import data_overrides, dataset_label, load_config, provenance, slug
from egra.pipeline.checks import ConfigError
from egra.pipeline.io import PER_USER_FILE, write_json

log = logging.getLogger(__name__)

COMPARE_JSON, COMPARE_MD = "compare.json", "compare.md"
SECOND_SEED_OFFSET = 1000
TIE_BREAK = "valid/NDCG@20"
STAMP = "study.json"


@dataclass
class ModelSpec:
    overrides: list[str] = field(default_factory=list)
    # hparams_search config of its Optuna search space (tune_<model>); null: defaults only
    search: str | None = None
    # "<label>:<backbone name>": backbones.<name>.model.* take <label>'s chosen model.* values
    backbone: str | None = None


@dataclass
class CompareConfig:
    dataset: str = "small"
    models: dict[str, ModelSpec] = field(default_factory=dict)
    reference: str = "EGRA"
    trials: int = 8
    selection_seeds: list[int] = field(default_factory=lambda: [100])
    eval_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    data_seed: int = 0
    vary_data: bool = False
    selection_metric: str = "valid/Recall@20"
    endpoint: str = "test/Recall@20"
    secondary: list[str] = field(default_factory=lambda: ["test/NDCG@20", "test/popgroup0/Recall@20"])
    bootstrap_samples: int = 10_000
    bootstrap_seed: int = 0
    level: float = 0.95
    compute_match: str = "none"  # none | second_seed
    jobs: int = 1  # parallel jobs of each multirun (Hydra's joblib launcher when > 1)
    # false: launch nothing, analyse the runs that exist (after a crash, or with newer analysis
    # code than the runs were made with); what is missing is reported as missing.
    launch: bool = True
    out: str | None = None
    publish: str | None = None  # also write <publish>.json / .md (e.g. bench/results/compare_small)
    # Other comparisons' directories: an evaluation run of theirs launched with exactly this
    # study's overrides (the same config) is linked instead of trained again.
    reuse: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # given to every egra-train job


def load(
    conf_dir: str | Path, overrides: Sequence[str] = (), train_overrides: Sequence[str] = ()
) -> DictConfig:
    """The study config, checked: schema types, then the protocol's own rules."""
    cfg = load_config(conf_dir, "compare", overrides, CompareConfig, train_overrides)
    check(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def check(cfg: DictConfig) -> None:
    """The protocol's own rules (one ConfigError line naming every mistake)."""
    errors = []
    if not cfg.models:
        errors.append("models: expected at least one model")
    if cfg.reference not in cfg.models:
        errors.append(f"reference={cfg.reference!r}: expected one of {', '.join(cfg.models)}")
    if not cfg.eval_seeds:
        errors.append("eval_seeds: expected at least one seed")
    if not cfg.selection_seeds:
        errors.append("selection_seeds: expected at least one seed")
    if set(cfg.selection_seeds) & set(cfg.eval_seeds):
        both = sorted(set(cfg.selection_seeds) & set(cfg.eval_seeds))
        errors.append(
            f"selection_seeds and eval_seeds share {both}: selection must not see an evaluated seed"
        )
    if cfg.trials < 0:
        errors.append(f"trials={cfg.trials}: expected ≥ 0")
    if cfg.compute_match not in ("none", "second_seed"):
        errors.append(f"compute_match={cfg.compute_match!r}: expected none or second_seed")
    if cfg.jobs < 1:
        errors.append(f"jobs={cfg.jobs}: expected ≥ 1")
    if not 0 < cfg.level < 1:
        errors.append(f"level={cfg.level}: expected a probability in (0, 1)")
    if cfg.endpoint in cfg.secondary:
        errors.append(f"secondary repeats the primary endpoint {cfg.endpoint}")
    for label, spec in cfg.models.items():
        if spec.backbone is not None:
            src = spec.backbone.split(":")[0]
            if ":" not in spec.backbone or src not in cfg.models:
                errors.append(
                    f"models.{label}.backbone={spec.backbone!r}: expected <model label>:<backbone name>"
                )
            elif list(cfg.models).index(src) > list(cfg.models).index(label):
                errors.append(f"models.{label}.backbone: list {src} before {label}")
    if len({slug(m) for m in cfg.models}) < len(cfg.models):
        errors.append("models: two labels share a directory name")
    if errors:
        raise ConfigError("compare: " + "; ".join(errors))


# --------------------------------------------------------------------------- launching


def _value(v: Any) -> str:
    """An override's value as Hydra reads it back (strings quoted only when they need it)."""
    if isinstance(v, str):
        return json.dumps(v) if any(c in v for c in " ,=[]{}()'\"") or v == "" else v
    if isinstance(v, bool):
        return str(v).lower()
    return str(v) if not isinstance(v, (list, dict)) else json.dumps(v)


def as_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={_value(v)}" for k, v in params.items()]


def _launcher_overrides(cfg: DictConfig) -> list[str]:
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={cfg.jobs}"] if cfg.jobs > 1 else []


def _data_seed(cfg: DictConfig, seed: int) -> str:
    return f"data.seed={seed if cfg.vary_data else cfg.data_seed}"


def _set_aside(d: Path, why: str, echo: Callable[[str], None]) -> None:
    """Keep a stale selection for the record, out of the way of the one that replaces it."""
    n = 1
    while (stale := d.with_name(f"{d.name}.stale{n}")).exists():
        n += 1
    echo(f"  {d}: {why}; moved to {stale.name}")
    d.rename(stale)


def _stamped(d: Path, stamp: dict[str, Any], echo: Callable[[str], None]) -> None:
    """Set ``d`` aside when it was made under other settings, then record the current ones."""
    f = d / STAMP
    if f.is_file() and json.loads(f.read_text()) != stamp:
        _set_aside(d, "made under other settings", echo)
    d.mkdir(parents=True, exist_ok=True)
    if not f.is_file():
        write_json(f, stamp)


@dataclass
class Candidate:
    """One configuration a model may be evaluated with: its parameters (empty: the defaults)
    and its selection runs."""

    name: str
    params: dict[str, Any]
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> metrics (None: no result)
    statuses: dict[int, str] = field(default_factory=dict)

    def score(self, metric: str) -> float:
        vals = [(r or {}).get(metric) for r in self.runs.values()]
        return float(np.mean(vals)) if vals and all(isinstance(v, (int, float)) for v in vals) else math.nan

    @property
    def eligible(self) -> bool:
        return bool(self.statuses) and all(s == "ok" for s in self.statuses.values())


class Study:
    """One comparison: its config, its directory, how jobs run."""

    def __init__(
        self,
        cfg: DictConfig,
        conf_dir: str | Path,
        task_function: launch.TaskFunction | None = None,
        echo: Callable[[str], None] = print,
        command: str = "",
    ) -> None:
        self.cfg, self.conf_dir, self.task_function, self.echo = cfg, Path(conf_dir), task_function, echo
        self.command = command
        extra = list(cfg.overrides)
        self.data = data_overrides(self.conf_dir, cfg.dataset, extra)
        self.label = dataset_label(cfg.dataset, extra)
        self.out = Path(cfg.out or Path("logs") / "compare" / self.label).resolve()
        self.common = [*self.data, "logger=csv", "trainer.enable_progress_bar=false", *extra]
        self.skipped = 0  # launches left out with launch=false

    def _train(self, overrides: list[str], log_name: str, multirun: bool) -> int:
        if not self.cfg.launch:
            self.skipped += 1
            return 0
        return launch.train(
            overrides,
            self.out / "logs" / f"{log_name}.log",
            multirun=multirun,
            task_function=self.task_function,
            conf_dir=self.conf_dir,
        )

    # ------------------------------------------------------------------ selection

    def select(self, label: str, spec: DictConfig, own: list[str]) -> tuple[list[Candidate], int | None]:
        """Run (or reuse) the candidates of one model on the selection seeds; (candidates, the
        index of the chosen one — None when there was nothing to choose)."""
        cfg = self.cfg
        trials = cfg.trials if spec.search else 0
        first, rest = cfg.selection_seeds[0], list(cfg.selection_seeds[1:])
        root = self.out / "select" / slug(label)
        if trials == 0:
            return [Candidate("defaults", {})], None
        stamp = {
            "overrides": own,
            "trials": trials,
            "search": spec.search,
            "seeds": list(cfg.selection_seeds),
        }
        _stamped(root, stamp, self.echo)
        base = [*own, f"seed={first}", _data_seed(cfg, first)]
        defaults = root / "defaults"
        if not _up_to_date(defaults, base):
            self.echo(f"  {label}: its defaults on seed {first}")
            self._train([*base, f"hydra.run.dir={defaults}"], f"select_{slug(label)}", multirun=False)
        study = root / "trials"
        if not (study / "optimization_results.yaml").is_file():
            self.echo(f"  {label}: {trials} trials of {spec.search} on seed {first}")
            self._train(
                [
                    *base,
                    f"hparams_search={spec.search}",
                    f"hydra.sweeper.n_trials={trials}",
                    f"hydra.sweeper.n_jobs={cfg.jobs}",
                    f"hydra.sweeper.sampler.seed={first}",
                    f"hydra.sweep.dir={study}",
                    *_launcher_overrides(cfg),
                ],
                f"select_{slug(label)}",
                multirun=True,
            )
        passed = {*parse_overrides(base), "hparams_search"}
        candidates = [Candidate("defaults", {})]
        candidates[0].runs[first], candidates[0].statuses[first] = self._result(defaults)
        trial_dirs = sorted(
            (d for d in study.glob("*") if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)
        )
        for d in trial_dirs:
            job = read_job(d)
            params = {k: v for k, v in parse_overrides(job.overrides).items() if k not in passed}
            c = Candidate(f"trial {d.name}", params)
            c.runs[first], c.statuses[first] = self._result(d)
            candidates.append(c)
        for i, c in enumerate(candidates):
            for s in rest:
                d = root / f"seed{s}" / ("defaults" if i == 0 else f"trial{i - 1}")
                planned = [*own, *as_overrides(c.params), f"seed={s}", _data_seed(cfg, s)]
                if not _up_to_date(d, planned):
                    self.echo(f"  {label}: {c.name} on selection seed {s}")
                    self._train([*planned, f"hydra.run.dir={d}"], f"select_{slug(label)}", multirun=False)
                c.runs[s], c.statuses[s] = self._result(d)
        return candidates, choose(candidates, cfg.selection_metric)

    @staticmethod
    def _result(d: Path) -> tuple[dict[str, Any] | None, str]:
        job = read_job(d) if d.is_dir() else None
        if job is None:
            return None, MISSING
        return job.metrics, job.status

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, label: str, own: list[str], params: dict[str, Any], seeds: Sequence[int], sub: str
    ) -> Path:
        """The chosen configuration on ``seeds``: one multirun, ``eval/<label>[/<sub>]/seed<S>``
        (finished jobs of the same config are skipped inside the job: ``skip_if_done``)."""
        sweep = self.out / sub / slug(label)
        data = "data.seed=${seed}" if self.cfg.vary_data else f"data.seed={self.cfg.data_seed}"
        planned = [*own, *as_overrides(params), data]
        todo = [s for s in seeds if not _up_to_date(sweep / f"seed{s}", [*planned, f"seed={s}"])]
        for s in list(todo):
            twin = self._twin([*planned, f"seed={s}"], s)
            if twin is not None:
                self.echo(f"  {label}: seed {s} reuses {twin}")
                (sweep / f"seed{s}").parent.mkdir(parents=True, exist_ok=True)
                if (sweep / f"seed{s}").is_symlink():
                    (sweep / f"seed{s}").unlink()
                if not (sweep / f"seed{s}").exists():
                    (sweep / f"seed{s}").symlink_to(twin, target_is_directory=True)
                    todo.remove(s)
        if todo:
            self.echo(f"  {label}: evaluation seeds {', '.join(map(str, todo))}")
            self._train(
                [
                    *planned,
                    "seed=" + ",".join(map(str, seeds)),
                    f"hydra.sweep.dir={sweep}",
                    "hydra.sweep.subdir=seed${seed}",
                    *_launcher_overrides(self.cfg),
                ],
                f"{sub}_{slug(label)}",
                multirun=True,
            )
        return sweep

    def _twin(self, planned: list[str], seed: int) -> Path | None:
        """A finished evaluation run of a ``reuse`` directory launched with ``planned`` (a run
        that directory itself reused is followed to the run it links)."""
        for other in self.cfg.reuse:
            for link in sorted(Path(other).resolve().glob(f"eval/*/seed{seed}")):
                run = link.resolve()
                if _up_to_date(run, planned):
                    return run
        return None

    def second_trainings(self, label: str, own: list[str], params: dict[str, Any]) -> None:
        """compute_match=second_seed: each evaluation seed's second training (seed + 1000,
        the evaluation seed's data)."""
        for s in self.cfg.eval_seeds:
            d = self.out / "eval2" / slug(label) / f"seed{s}"
            planned = [*own, *as_overrides(params), f"seed={s + SECOND_SEED_OFFSET}", _data_seed(self.cfg, s)]
            if not _up_to_date(d, planned):
                self.echo(f"  {label}: second training for evaluation seed {s}")
                self._train([*planned, f"hydra.run.dir={d}"], f"eval2_{slug(label)}", multirun=False)

    # ------------------------------------------------------------------ the whole study

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self.echo(f"compare on {self.label}: {', '.join(cfg.models)} -> {self.out}")
        chosen: dict[str, dict[str, Any]] = {}
        selection: dict[str, Any] = {}
        owns: dict[str, list[str]] = {}
        for label, spec in cfg.models.items():
            own = [*self.common, *spec.overrides, *backbone_overrides(spec, chosen)]
            owns[label] = own
            candidates, idx = self.select(label, spec, own)
            pick = candidates[idx if idx is not None else 0]
            chosen[label] = pick.params
            selection[label] = {
                "candidates": [
                    {
                        "name": c.name,
                        "params": c.params,
                        "score": c.score(cfg.selection_metric),
                        "statuses": {str(s): st for s, st in c.statuses.items()},
                    }
                    for c in candidates
                ],
                "chosen": pick.name,
                "params": pick.params,
            }
        for label in cfg.models:
            self.evaluate(label, owns[label], chosen[label], cfg.eval_seeds, "eval")
            if cfg.compute_match == "second_seed" and label != cfg.reference:
                self.second_trainings(label, owns[label], chosen[label])
        frame = collect(self.out / "eval")
        result = analyse(cfg, frame, self.out, selection, owns)
        result["provenance"] = provenance(self.command)
        # The code the runs were trained with (an analysis may be newer: launch=false).
        result["provenance"]["run_revisions"] = sorted(
            {str(r) for r in frame.get("git_revision", pd.Series(dtype=object)).dropna()}
        )
        if self.skipped:
            self.echo(
                f"launch=false: {self.skipped} launches left out (runs missing or made with other "
                "overrides); the runs that exist were analysed as they are"
            )
        write_json(self.out / COMPARE_JSON, result)
        (self.out / COMPARE_MD).write_text(markdown(result))
        if cfg.publish:
            pub = Path(cfg.publish)
            pub.parent.mkdir(parents=True, exist_ok=True)
            write_json(pub.with_suffix(".json"), result)
            pub.with_suffix(".md").write_text(markdown(result))
        return result


def _up_to_date(d: Path, overrides: Sequence[str]) -> bool:
    """``d`` holds a finished job launched with these overrides (seeds and all)."""
    if not (d / "metrics.json").is_file():
        return False
    ignore = ("hydra.",)
    want = {k: v for k, v in parse_overrides(overrides).items() if not k.startswith(ignore)}
    return parse_overrides(read_job(d).overrides) == want


def choose(candidates: Sequence[Candidate], metric: str) -> int:
    """The index of the best eligible candidate by mean ``metric`` (tie: mean valid NDCG@20,
    then the earlier candidate); the defaults (index 0) when none is eligible."""
    best, best_key = 0, None
    for i, c in enumerate(candidates):
        if not c.eligible or math.isnan(c.score(metric)):
            continue
        tie = c.score(TIE_BREAK)
        key = (c.score(metric), -math.inf if math.isnan(tie) else tie)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def backbone_overrides(spec: DictConfig, chosen: dict[str, dict[str, Any]]) -> list[str]:
    """``backbones.<name>.model.<key>=<value>`` for the chosen ``model.*`` parameters of the
    model ``spec.backbone`` names (chosen before it: models run in order)."""
    if spec.backbone is None:
        return []
    label, name = spec.backbone.split(":", 1)
    if label not in chosen:
        raise ConfigError(f"backbone {spec.backbone!r}: list {label} before the model built on it")
    return as_overrides(
        {f"backbones.{name}.{k}": v for k, v in chosen[label].items() if k.startswith("model.")}
    )


# --------------------------------------------------------------------------- analysis


def _run_table(frame: pd.DataFrame, out: Path, label: str, sub: str = "eval") -> dict[int, pd.Series]:
    """The rows of one model's runs under ``<sub>/<label>/``, by training seed."""
    root = str(out / sub / slug(label)) + "/"
    part = frame[frame["path"].map(lambda p: (str(p) + "/").startswith(root))]
    return {int(r["seed"]): r for _, r in part.iterrows() if pd.notna(r["seed"])}


def _per_user(path: str | Path, metric: str) -> dict[int, float] | None:
    """{user: value} of a run's per-user test file for ``test/<metric>`` (None if absent)."""
    f = Path(path) / PER_USER_FILE
    name = metric.split("/", 1)[1] if metric.startswith("test/") else None
    if name is None or not f.is_file():
        return None
    data = np.load(f)
    if name not in data.files:
        return None
    return dict(zip(data["users"].tolist(), data[name].tolist()))


def _compute(row: pd.Series) -> dict[str, float]:
    """Epochs and seconds of one run, its backbone's training included (a reused backbone
    counts what it cost when it was built)."""
    epochs = float(row.get("epochs_run") or 0)
    seconds = float(row.get("wall_time_s") or 0)
    bb_epochs = row.get("backbone/epochs_run")
    if isinstance(bb_epochs, (int, float)) and not math.isnan(bb_epochs):
        epochs += float(bb_epochs)
        if _truthy(row.get("pretrain_reused")):
            seconds += float(row.get("backbone/build_time_s") or 0)
    trainings = 2 if isinstance(bb_epochs, (int, float)) and not math.isnan(bb_epochs) else 1
    return {"trainings": trainings, "epochs": epochs, "seconds": seconds}


def analyse(
    cfg: DictConfig,
    frame: pd.DataFrame,
    out: Path,
    selection: dict[str, Any],
    owns: dict[str, list[str]],
) -> dict[str, Any]:
    """Per-seed results, summaries, tests and compute of every model (the content of
    ``compare.json`` without its provenance)."""
    seeds = [int(s) for s in cfg.eval_seeds]
    endpoints = [cfg.endpoint, *cfg.secondary]
    frame_second = None
    if cfg.compute_match == "second_seed" and (out / "eval2").is_dir():
        frame_second = collect(out / "eval2")
    models: dict[str, Any] = {}
    runs: dict[str, dict[int, pd.Series]] = {}
    for label in cfg.models:
        table = _run_table(frame, out, label)
        compute = {s: _compute(table[s]) for s in table}
        if frame_second is not None and label != cfg.reference:
            second = _run_table(frame_second, out, label, "eval2")
            for s in list(table):
                other = second.get(s + SECOND_SEED_OFFSET)
                if other is None:
                    continue
                c2 = _compute(other)
                compute[s] = {k: compute[s][k] + c2[k] for k in compute[s]}
                # The better of the two trainings on the selection metric (valid), never on test.
                if _num(other.get(cfg.selection_metric)) > _num(table[s].get(cfg.selection_metric)):
                    table[s] = other
        runs[label] = table
        row: dict[str, Any] = {
            "overrides": list(owns[label]),
            "selection": selection[label],
            "status": {str(s): (table[s]["status"] if s in table else MISSING) for s in seeds},
            "runs": {str(s): str(table[s]["path"]) for s in seeds if s in table},
            "per_seed": {},
            "summary": {},
            "compute": {},
        }
        for m in [*endpoints, cfg.selection_metric]:
            vals = [
                _num(table[s].get(m))
                if s in table and table[s]["status"] not in (FAILED, MISSING)
                else math.nan
                for s in seeds
            ]
            row["per_seed"][m] = vals
            mean, std, n = mean_std(vals)
            row["summary"][m] = {"mean": mean, "std": std, "n": n}
        for k in ("trainings", "epochs", "seconds"):
            vals = [compute[s][k] for s in seeds if s in compute]
            row["compute"][k] = float(np.mean(vals)) if vals else math.nan
        models[label] = row
    tests = []
    ref = cfg.reference
    for label in cfg.models:
        if label == ref:
            continue
        for m in endpoints:
            a, b = models[ref]["per_seed"][m], models[label]["per_seed"][m]
            paired = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
            t = stats.seed_test([x for x, _ in paired], [y for _, y in paired])
            entry = {"comparison": f"{ref} vs {label}", "endpoint": m, "primary": m == cfg.endpoint, **t}
            diffs = []
            for s in seeds:
                if s not in runs[ref] or s not in runs[label]:
                    continue
                ua, ub = _per_user(runs[ref][s]["path"], m), _per_user(runs[label][s]["path"], m)
                if ua is None or ub is None:
                    diffs = []
                    break
                users = sorted(set(ua) & set(ub))
                diffs.append(np.array([ua[u] - ub[u] for u in users]))
            if diffs:
                entry["bootstrap"] = stats.hierarchical_bootstrap(
                    diffs, cfg.bootstrap_samples, cfg.bootstrap_seed, cfg.level
                )
            tests.append(entry)
    for entry, adj in zip(tests, stats.holm([t["p"] for t in tests])):
        entry["p_holm"] = adj
    return {
        "kind": "compare",
        "dataset": cfg.dataset,
        "label": dataset_label(cfg.dataset, list(cfg.overrides)),
        "protocol": {
            **{
                k: OmegaConf.to_container(cfg)[k]
                for k in (
                    "reference",
                    "trials",
                    "selection_seeds",
                    "eval_seeds",
                    "data_seed",
                    "vary_data",
                    "selection_metric",
                    "endpoint",
                    "secondary",
                    "compute_match",
                    "overrides",
                )
            },
            "models": list(cfg.models),  # the order of the tables (JSON objects keep none)
            "test": "two-sided paired t-test over evaluation seeds",
            "correction": "Holm over every p-value of the table",
            "bootstrap": {
                "kind": "hierarchical (seeds, then users within seed), percentile interval",
                "samples": cfg.bootstrap_samples,
                "seed": cfg.bootstrap_seed,
                "level": cfg.level,
            },
            "tie_break": f"{TIE_BREAK}, then the earlier candidate (defaults first)",
            "wilcoxon_floor": stats.wilcoxon_floor(len(seeds)),
        },
        "models": models,
        "tests": tests,
    }


def _truthy(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


# --------------------------------------------------------------------------- rendering


def _params_text(params: dict[str, Any]) -> str:
    if not params:
        return "defaults"
    return ", ".join(f"{k.split('.', 1)[-1]}={render.fmt_value(v)}" for k, v in params.items())


def selection_line(p: dict[str, Any]) -> str:
    """The protocol's selection bullet (no selection step at all when there are no trials)."""
    if not p["trials"]:
        return "- Selection: none (`trials=0`): every model runs its shipped defaults."
    return (
        f"- Selection: each model's defaults + {p['trials']} Optuna trials (same budget for every tuned model) "
        f"on {p['selection_metric']} of seed(s) {', '.join(map(str, p['selection_seeds']))}, "
        f"disjoint from the evaluation seeds; ties: {p['tie_break']}."
    )


def markdown(result: dict[str, Any]) -> str:
    """``compare.md``: protocol header, primary endpoint, secondary endpoints, selection, compute."""
    p = result["protocol"]
    models = _ordered(result)
    seeds = p["eval_seeds"]
    prov = result.get("provenance", {})
    data = "data seed = evaluation seed" if p["vary_data"] else f"data seed {p['data_seed']} for every run"
    lines = [
        f"# Comparison on `{result['label']}`",
        "",
        *headline(result),
        "",
        "## Protocol",
        "",
        f"- Models: {', '.join(models)}; reference: {p['reference']}.",
        selection_line(p),
        f"- Evaluation: seeds {', '.join(map(str, seeds))} (training seed; {data}); test split read once, "
        "at each run's best-valid epoch.",
        f"- Primary endpoint, fixed before the run: **{p['endpoint']}**. Secondary: {', '.join(p['secondary']) or 'none'}.",
        f"- Test: {p['test']}; {p['correction']} (raw and adjusted shown). With {len(seeds)} seeds an exact "
        f"Wilcoxon test cannot go below p = {render.fmt_p(p['wilcoxon_floor'])}, so it is not used.",
        f"- Per-user evidence: {p['bootstrap']['kind']}, {p['bootstrap']['samples']} resamples "
        f"(seed {p['bootstrap']['seed']}), {100 * p['bootstrap']['level']:g}% interval of the mean difference.",
        f"- Compute matching: {p['compute_match']}.",
    ]
    if p["overrides"]:
        lines.append("- Every run: " + " ".join(f"`{o}`" for o in p["overrides"]))
    if prov:
        v = prov.get("versions", {})
        lines.append(
            f"- Made by `{prov.get('command', '')}` at commit {str(prov.get('git_revision'))[:10]}"
            f"{' (uncommitted changes)' if prov.get('git_dirty') else ''} on {prov.get('date')}; "
            + ", ".join(f"{k} {x}" for k, x in v.items() if x)
            + "."
        )
        runs_at = [r[:10] for r in prov.get("run_revisions", [])]
        if runs_at and runs_at != [str(prov.get("git_revision"))[:10]]:
            lines.append(f"- The evaluation runs were trained at commit {', '.join(runs_at)}.")
    lines += ["", f"## Primary endpoint: {p['endpoint']}", ""]
    lines += _endpoint_section(result, p["endpoint"])
    if p["secondary"]:
        lines += ["", "## Secondary endpoints", ""]
        for m in p["secondary"]:
            lines += [f"### {m}", "", *_endpoint_section(result, m), ""]
    lines += ["", "## Selection", ""]
    sel_rows = []
    for label, row in models.items():
        s = row["selection"]
        cands = s["candidates"]
        chosen = next((c for c in cands if c["name"] == s["chosen"]), cands[0])
        defaults = cands[0]
        sel_rows.append(
            [
                label,
                str(len(cands)),
                s["chosen"],
                _params_text(s["params"]),
                f"{chosen['score']:.4f}" if len(cands) > 1 else "—",
                f"{defaults['score']:.4f}" if len(cands) > 1 else "—",
            ]
        )
    lines.append(
        render.table(
            [
                "model",
                "candidates",
                "chosen",
                "parameters",
                f"selection {p['selection_metric']}",
                "defaults' score",
            ],
            sel_rows,
            ["l", "r", "l", "l", "r", "r"],
        )
    )
    lines += ["", "## Compute (evaluation runs, mean per seed, pretraining included)", ""]
    lines.append(
        render.table(
            ["model", "trainings", "epochs", "wall time (s)"],
            [
                [
                    label,
                    f"{r['compute']['trainings']:g}",
                    f"{r['compute']['epochs']:.0f}",
                    f"{r['compute']['seconds']:.1f}",
                ]
                for label, r in models.items()
            ],
        )
    )
    bad = [
        f"- {label}, seed {s}: {st}"
        for label, r in models.items()
        for s, st in r["status"].items()
        if st != "ok"
    ]
    if bad:
        lines += [
            "",
            "Runs that did not end `ok` (collapsed runs count; failed and missing ones do not):",
            "",
            *bad,
        ]
    return "\n".join(lines) + "\n"


def _ordered(result: dict[str, Any]) -> dict[str, Any]:
    """The models of a result in the study's order."""
    models = result["models"]
    return {m: models[m] for m in result["protocol"].get("models", list(models))}


def headline(result: dict[str, Any]) -> list[str]:
    """``## Headline``: the primary endpoint of every model, and the reference's difference to
    each with its interval and Holm-adjusted p (what a summary quotes)."""
    p, models = result["protocol"], _ordered(result)
    ref, metric = p["reference"], p["endpoint"]
    tests = {t["comparison"].split(" vs ", 1)[1]: t for t in result["tests"] if t["endpoint"] == metric}
    base = models[ref]["summary"][metric]["mean"]
    rows = []
    for label, r in models.items():
        s = r["summary"][metric]
        t = tests.get(label)
        b = (t or {}).get("bootstrap")
        rows.append(
            [
                label,
                render.fmt_mean_std(s["mean"], s["std"]),
                render.fmt_percent(s["mean"] / base - 1) if t else "reference",
                f"[{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]" if b else "—",
                render.fmt_p(t["p_holm"]) if t else "—",
            ]
        )
    return [
        "## Headline",
        "",
        f"{metric} (primary endpoint), mean ± std over evaluation seeds "
        f"{', '.join(map(str, p['eval_seeds']))}; each model against {ref}: its difference to {ref} "
        f"relative to {ref}, the {100 * p['bootstrap']['level']:g}% interval of {ref} − model "
        "(users within seeds) and the Holm-adjusted p of the paired t-test over seeds.",
        "",
        render.table(["model", metric, f"vs {ref}", f"CI of {ref} − model", "p (Holm)"], rows),
    ]


def _endpoint_section(result: dict[str, Any], metric: str) -> list[str]:
    models, p = _ordered(result), result["protocol"]
    seeds = p["eval_seeds"]
    best = max(
        (
            r["summary"][metric]["mean"]
            for r in models.values()
            if not math.isnan(r["summary"][metric]["mean"])
        ),
        default=math.nan,
    )
    rows = []
    for label, r in models.items():
        s = r["summary"][metric]
        text = render.fmt_mean_std(s["mean"], s["std"])
        rows.append(
            [
                label,
                f"**{text}**" if s["mean"] == best else text,
                *[f"{v:.4f}" if not math.isnan(v) else "—" for v in r["per_seed"][metric]],
            ]
        )
    lines = [
        render.table(["model", "mean ± std", *[f"seed {s}" for s in seeds]], rows),
        "",
    ]
    tests = [t for t in result["tests"] if t["endpoint"] == metric]
    if tests:
        trows = []
        for t in tests:
            b = t.get("bootstrap")
            ci = f"[{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]" if b else "—"
            trows.append(
                [
                    t["comparison"],
                    str(t["n"]),
                    render.fmt_signed(t["mean_diff"]),
                    render.fmt_percent(t["rel_diff"]),
                    ci,
                    render.fmt_p(t["p"]),
                    render.fmt_p(t["p_holm"]),
                ]
            )
        lines.append(
            render.table(
                [
                    "comparison",
                    "seeds",
                    "difference",
                    "relative",
                    f"{100 * p['bootstrap']['level']:g}% CI (users in seeds)",
                    "p (t, seeds)",
                    "p (Holm)",
                ],
                trows,
            )
        )
    return lines


def render_file(path: str | Path) -> str:
    """The Markdown of a ``compare.json`` (what ``egra-report <compare dir>`` prints)."""
    return markdown(json.loads(Path(path).read_text()))


def compare(
    conf_dir: str | Path,
    overrides: Sequence[str] = (),
    train_overrides: Sequence[str] = (),
    task_function: launch.TaskFunction | None = None,
    echo: Callable[[str], None] = print,
    command: str = "",
) -> dict[str, Any]:
    """Load the study config with ``overrides`` (and ``train_overrides`` for every job) and run
    it; returns ``compare.json``'s content."""
    cfg = load(conf_dir, overrides, train_overrides)
    return Study(cfg, conf_dir, task_function, echo, command).run()
