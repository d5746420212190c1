"""A fair comparison of models: equal tuning budget, several seeds, paired tests.

For each model (its recipe, such as ``model=lightgcn``): its shipped defaults and an
Optuna study of ``trials`` trials on valid Recall@20 (``hparams_search=tune_<model>``, Hydra's
Optuna sweeper), then the better of the two re-run on ``seeds`` training seeds (data fixed),
then paired tests of the reference model (EGRA) against every other one:

* over seeds: the seed-level test metric of the two models, paired by seed (paired
  t-test and Wilcoxon signed-rank);
* per user: each test user's metric averaged over the seeds, paired by user (Wilcoxon
  signed-rank and paired t-test over all test users).

Every step is an ``egra-train`` multirun in its own directory under ``out``; a re-run
resumes: finished studies and seed runs are reused. ``compare.json`` / ``compare.md`` hold
the result; ``egra-report <out>`` prints it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from egra.pipeline.io import PER_USER_FILE

log = logging.getLogger(__name__)

COMPARE_JSON, COMPARE_MD = "compare.json", "compare.md"
METRICS = ("Recall@20", "NDCG@20")


@dataclass(frozen=True)
class Entry:
    """One model of the comparison: its label, recipe (an override: ``model=<name>`` or
    ``experiment=<name>``) and search space."""

    label: str
    recipe: str
    search: str  # hparams_search config: tune_<model>
    # (label, backbone name): this model's backbone takes that entry's tuned parameters, so
    # EGRA is built on the MGCN it is compared with, not on MGCN's defaults.
    backbone: tuple[str, str] | None = None


def default_entries() -> list[Entry]:
    """LightGCN, MGCN and EGRA with their recipes of the generated presets."""
    return [
        Entry("LightGCN", "model=lightgcn", "tune_lightgcn"),
        Entry("MGCN", "model=mgcn", "tune_mgcn"),
        Entry("EGRA", "model=egra", "tune_egra", backbone=("MGCN", "mgcn")),
    ]


def _train(args: Sequence[str], log_file: Path) -> None:
    cmd = [sys.executable, "-m", "egra.train", *args]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def _recorded(job_dir: Path, prefixes: tuple[str, ...]) -> set[str] | None:
    """The overrides of a finished job that start with ``prefixes`` (None: no such job)."""
    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.exists():
        return None
    return {o for o in yaml.safe_load(f.read_text()) or [] if o.startswith(prefixes)}


def _set_aside(d: Path, why: str) -> None:
    """Keep a stale study or run for the record, out of the way of the one that replaces it."""
    n = 1
    while (stale := d.with_name(f"{d.name}.stale{n}")).exists():
        n += 1
    log.info("%s: %s; moved to %s", d, why, stale)
    d.rename(stale)


def tune(entry: Entry, out: Path, common: Sequence[str], trials: int, seed: int) -> dict[str, Any]:
    """Run (or reuse) one model's tuning: its shipped defaults plus an Optuna study of ``trials``
    trials; the better of the two on valid Recall@20 is chosen (``params`` empty: the defaults).

    Every model gets the same budget (defaults + ``trials``). A study or defaults run made on
    another backbone (``backbones.*`` overrides: the backbone's model chose differently since)
    is set aside and redone.
    """
    study = out / "tune" / entry.label
    backbone = {o for o in common if o.startswith("backbones.")}
    for d in (study / "0", study / "defaults"):
        seen = _recorded(d, ("backbones.",))
        if seen is not None and seen != backbone:
            _set_aside(study if d.name == "0" else d, "made on another backbone")
    result = study / "optimization_results.yaml"
    if not result.exists():
        log.info("tuning %s: %d trials", entry.label, trials)
        _train(
            [
                entry.recipe,
                f"hparams_search={entry.search}",
                f"hydra.sweeper.n_trials={trials}",
                f"hydra.sweeper.sampler.seed={seed}",
                f"hydra.sweep.dir={study}",
                f"seed={seed}",
                *common,
            ],
            out / "logs" / f"tune_{entry.label}.log",
        )
    best = yaml.safe_load(result.read_text())
    defaults = study / "defaults"
    if not (defaults / "metrics.json").exists():
        log.info("tuning %s: its defaults", entry.label)
        _train(
            [entry.recipe, f"seed={seed}", f"hydra.run.dir={defaults}", *common],
            out / "logs" / f"tune_{entry.label}.log",
        )
    m = json.loads((defaults / "metrics.json").read_text())
    default_value = m.get("valid/Recall@20") if m.get("status", "ok") == "ok" else None
    chosen = {
        "params": dict(best.get("best_params") or {}),
        "valid/Recall@20": best.get("best_value"),
        "defaults_valid/Recall@20": default_value,
        "chosen": "study",
    }
    if default_value is not None and (
        chosen["valid/Recall@20"] is None or default_value >= chosen["valid/Recall@20"]
    ):
        chosen.update({"params": {}, "valid/Recall@20": default_value, "chosen": "defaults"})
    return chosen


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, str) else value}"


def backbone_overrides(entry: Entry, tuned: dict[str, dict[str, Any]]) -> list[str]:
    """``backbones.<name>.model.<key>=<value>`` for the tuned model parameters of the entry
    ``entry.backbone`` names (tuned before it: entries run in order)."""
    if entry.backbone is None:
        return []
    label, name = entry.backbone
    if label not in tuned:
        raise ValueError(f"{entry.label}'s backbone takes {label}'s tuned parameters: list {label} before it")
    params = tuned[label]["params"]
    return [_override(f"backbones.{name}.{k}", v) for k, v in params.items() if k.startswith("model.")]


def run_seeds(
    entry: Entry, params: dict[str, Any], out: Path, common: Sequence[str], seeds: Sequence[int]
) -> Path:
    """Re-run the chosen parameters on every seed: one multirun, ``<sweep>/seed<S>/``.

    Finished seeds are skipped (``skip_if_done``), so an interrupted comparison resumes.
    """
    sweep = out / "seeds" / entry.label
    # Seed runs of another choice (the chosen parameters or the backbone changed) are redone.
    keys = ("model.", "graph.", "callbacks.", "backbones.")  # what a choice sets (the tune_* spaces)
    want = {_override(k, v) for k, v in params.items()} | set(common)
    seen = _recorded(sweep / f"seed{seeds[0]}", keys)
    if seen is not None and seen != {o for o in want if o.startswith(keys)}:
        _set_aside(sweep, "made with other parameters")
    if any(not (sweep / f"seed{s}" / "metrics.json").exists() for s in seeds):
        log.info("%s: seeds %s", entry.label, list(seeds))
        _train(
            [
                "-m",
                entry.recipe,
                *[_override(k, v) for k, v in params.items()],
                "seed=" + ",".join(str(s) for s in seeds),
                f"hydra.sweep.dir={sweep}",
                "hydra.sweep.subdir=seed${seed}",
                *common,
            ],
            out / "logs" / f"seeds_{entry.label}.log",
        )
    return sweep


def _seed_runs(sweep: Path, seeds: Sequence[int]) -> list[dict[str, Any]]:
    runs = []
    for s in seeds:
        d = sweep / f"seed{s}"
        m = json.loads((d / "metrics.json").read_text())
        pu = np.load(d / PER_USER_FILE) if (d / PER_USER_FILE).exists() else None
        runs.append({"seed": s, "metrics": m, "per_user": pu})
    return runs


def paired_tests(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two-sided paired tests of ``a − b``: mean difference, t-test and Wilcoxon p-values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a - b
    out = {"n": int(len(diff)), "mean_diff": float(diff.mean()) if len(diff) else float("nan")}
    if len(diff) >= 2 and np.any(diff != diff[0]):
        out["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
    else:
        out["p_ttest"] = float("nan")
    out["p_wilcoxon"] = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return out


def _per_user_means(runs: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(users, metric averaged over seeds) for users evaluated in every seed."""
    if any(r["per_user"] is None for r in runs):
        return None
    tables = [dict(zip(r["per_user"]["users"].tolist(), r["per_user"][metric].tolist())) for r in runs]
    users = sorted(set.intersection(*(set(t) for t in tables)))
    return np.array(users), np.array([np.mean([t[u] for t in tables]) for u in users])


def summarize(
    entries: Sequence[Entry], tuned: dict[str, dict], runs: dict[str, list[dict]], reference: str
) -> dict[str, Any]:
    """Means ± std per model and the reference model's paired tests against each other model."""
    models = {}
    for e in entries:
        rs = runs[e.label]
        t = tuned[e.label]
        row = {
            "params": t["params"],
            "chosen": t.get("chosen", "study"),
            "tuned_valid/Recall@20": t["valid/Recall@20"],
            "defaults_valid/Recall@20": t.get("defaults_valid/Recall@20"),
        }
        for split, metric in [("test", m) for m in METRICS] + [
            ("valid", "Recall@20"),
            ("test", "popgroup0/Recall@20"),
        ]:
            vals = np.array([r["metrics"].get(f"{split}/{metric}", np.nan) for r in rs], dtype=np.float64)
            row[f"{split}/{metric}"] = {
                "mean": float(np.nanmean(vals)),
                "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "per_seed": vals.tolist(),
            }
        row["status"] = [r["metrics"].get("status", "ok") for r in rs]
        models[e.label] = row
    tests = {}
    ref_runs = runs[reference]
    for e in entries:
        if e.label == reference:
            continue
        t = {}
        for metric in METRICS:
            key = f"test/{metric}"
            t[f"seeds {key}"] = paired_tests(
                models[reference][key]["per_seed"], models[e.label][key]["per_seed"]
            )
            a, b = _per_user_means(ref_runs, metric), _per_user_means(runs[e.label], metric)
            if a is not None and b is not None:
                common, ia, ib = np.intersect1d(a[0], b[0], return_indices=True)
                t[f"users {key}"] = paired_tests(a[1][ia], b[1][ib])
        tests[f"{reference} vs {e.label}"] = t
    return {"reference": reference, "models": models, "tests": tests}


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", ""]
    keys = [f"test/{m}" for m in METRICS] + ["test/popgroup0/Recall@20", "valid/Recall@20"]
    lines += [
        "| model | " + " | ".join(keys) + " | chosen parameters |",
        "|---|" + "---:|" * len(keys) + "---|",
    ]
    best = {k: max(r[k]["mean"] for r in result["models"].values()) for k in keys}
    for label, r in result["models"].items():
        cells = []
        for k in keys:
            c = f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}"
            cells.append(f"**{c}**" if r[k]["mean"] == best[k] else c)
        params = (
            ", ".join(
                f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
                for k, v in r["params"].items()
            )
            or "the shipped defaults"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {params} |")
    lines += ["", "Paired tests (two-sided; difference = reference − other):", ""]
    lines += [
        "| comparison | test | n | mean difference | p (t-test) | p (Wilcoxon) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, t in result["tests"].items():
        for test, v in t.items():
            lines.append(
                f"| {name} | {test} | {v['n']} | {v['mean_diff']:+.4f} | {v['p_ttest']:.3g} | {v['p_wilcoxon']:.3g} |"
            )
    seeds = next(iter(result["models"].values()))["test/Recall@20"]["per_seed"]
    lines += ["", f"Per seed test Recall@20 ({len(seeds)} seeds):", ""]
    lines += [
        "| model | " + " | ".join(f"seed {i}" for i in range(len(seeds))) + " |",
        "|---|" + "---:|" * len(seeds),
    ]
    for label, r in result["models"].items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in r["test/Recall@20"]["per_seed"]) + " |")
    return "\n".join(lines) + "\n"


def _title(result: dict[str, Any]) -> str:
    return (
        f"Fair comparison on `{result['preset']}`: each model's defaults + {result['trials']} Optuna "
        f"trials, {len(result['seeds'])} seeds"
    )


def render_compare(path: str | Path) -> str:
    """The Markdown of a ``compare.json`` (what ``egra-report <compare dir>`` prints)."""
    result = json.loads(Path(path).read_text())
    return markdown(result, _title(result))


def compare(
    out: str | Path,
    preset: str = "small",
    trials: int = 10,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    extra: Sequence[str] = (),
    entries: Sequence[Entry] | None = None,
    reference: str = "EGRA",
) -> dict[str, Any]:
    """Tune every model with the same budget, re-run on seeds, test; writes compare.{json,md}."""
    out = Path(out).resolve()
    entries = list(entries or default_entries())
    common = [
        f"data.preset={preset}",
        "data.seed=0",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"paths.root_dir={Path.cwd()}",
        *extra,
    ]
    tuned, runs = {}, {}
    for e in entries:
        own = [*common, *backbone_overrides(e, tuned)]
        tuned[e.label] = tune(e, out, own, trials, seed=0)
        sweep = run_seeds(e, tuned[e.label]["params"], out, own, seeds)
        runs[e.label] = _seed_runs(sweep, seeds)
    result = summarize(entries, tuned, runs, reference)
    result.update({"preset": preset, "trials": trials, "seeds": list(seeds), "extra": list(extra)})
    (out / COMPARE_JSON).write_text(json.dumps(result, indent=1))
    (out / COMPARE_MD).write_text(markdown(result, _title(result)))
    return result
