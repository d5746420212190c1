"""EGRA with a pretrained backbone against ``model.graph_source=self`` (no pretraining), over seeds.

For each seed S two runs, unless their metrics.json exists:
    egra-train experiment=<E> [data.preset=<P>] seed=S [data.seed=S] threads=1               -> <runs>/pretrained_<P>_sS
    egra-train experiment=<E> ... model.graph_source=self <--self-overrides>                  -> <runs>/self_<P>_sS
where E is ``egra_<P>`` when that experiment exists (tiny, small, the real datasets) and
``egra_small`` with ``data.preset=<P>`` otherwise (other generated presets); ``data.seed=S`` for
generated data only. Both write their artifacts to ``<runs>/artifacts``, so (a) pretrains its
backbone (MGCN by default) there once per seed.

Recorded per run: test Recall@20 / NDCG@20 (best-valid epoch) and the time split
    pretrain  the backbone's training (its embedding artifact's build time; 0 for self),
    graph     S^pt: the graph artifact's build time (pretrained: from the backbone's vectors;
              self: the raw features' first graph, 0 with graph_init=warmup) + self's refreshes,
    train     EGRA's fit (fit_time_s) without the refreshes it contains,
and the run's wall time (every stage, evaluation included). Build times are read from the
artifact manifests, so a backbone reused from an earlier run still counts its real cost. The
raw-feature graphs S^m, which both variants build alike, are not counted.
Writes bench/results/self_graph_<P>.{md,json}.

    python bench/self_graph.py --preset small --seeds 0 1 2 --runs logs/self_graph --run
    python bench/self_graph.py --preset tiny --seeds 0 --run     # a smoke check of the script
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from egra.data.interactions import TEST, TRAIN
from egra.data.synthetic import PRESETS, generate
from egra.experiments import launch
from egra.experiments.aggregate import mean_std
from egra.experiments.render import fmt_mean_std, fmt_p
from egra.experiments.stats import seed_test
from egra.metrics.popularity import mostpop_metrics
from egra.pipeline.io import git_revision

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["test/Recall@20", "test/NDCG@20"]
TIMES = ["pretrain_s", "graph_s", "train_s", "total_s", "wall_time_s"]
VARIANTS = ("pretrained", "self")


def experiment_for(preset: str) -> tuple[str, list[str], bool]:
    """(experiment, extra overrides, whether the data is generated) for ``--preset``."""
    exp = f"egra_{preset}"
    extra: list[str] = []
    if not (ROOT / "conf" / "experiment" / f"{exp}.yaml").exists():
        exp, extra = "egra_small", [f"data.preset={preset}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={exp}", *extra])
    return exp, extra, str(cfg.data.source) == "synthetic"


def _manifest(artifact: str | None) -> dict[str, Any]:
    if not artifact or not (Path(artifact) / "manifest.json").exists():
        return {}
    return json.loads((Path(artifact) / "manifest.json").read_text())


def _build_s(artifact: str | None) -> float:
    m = _manifest(artifact)
    return float(m.get("build_time_s", m.get("seconds", 0.0)))


def times(metrics: dict[str, Any]) -> dict[str, float]:
    """The pretrain / graph / train split of one run's wall time (see the module docstring)."""
    refresh = float(metrics.get("graph_refresh_s", 0.0))
    out = {
        "pretrain_s": _build_s(metrics.get("pretrain_artifact")),
        "graph_s": _build_s(metrics.get("graph_artifact")) + refresh,
        "train_s": float(metrics["fit_time_s"]) - refresh,
        "wall_time_s": float(metrics.get("wall_time_s", float("nan"))),
    }
    out["total_s"] = out["pretrain_s"] + out["graph_s"] + out["train_s"]
    return out


def _stats(vals: list[float]) -> dict[str, Any]:
    mean, std, _ = mean_std(vals)  # the study layer's one rule: no std from one seed
    return {"mean": mean, "std": std, "per_seed": vals}


def train_run(run_dir: Path, *overrides: str) -> None:
    """One egra-train run at 1 thread (the study layer's launcher), unless it finished."""
    if not (run_dir / "metrics.json").is_file():
        args = [
            *overrides,
            "threads=1",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ]
        if launch.train(args, run_dir.parent / f"{run_dir.name}.log"):
            raise SystemExit(f"{run_dir}: egra-train failed (see {run_dir.parent / f'{run_dir.name}.log'})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", type=Path, default=Path("logs/self_graph"))
    ap.add_argument("--overrides", nargs="*", default=[], help="extra overrides for both runs")
    ap.add_argument("--self-overrides", nargs="*", default=[], help="extra overrides for the self runs")
    ap.add_argument("--self-name", default="self", help="run-directory prefix of the self runs")
    ap.add_argument("--run", action="store_true", help="train what is missing first")
    args = ap.parse_args()
    p = args.preset
    exp, extra, synthetic = experiment_for(p)
    runs = args.runs.resolve()
    common = [f"experiment={exp}", *extra, f"paths.artifact_dir={runs / 'artifacts'}", *args.overrides]
    variants = {
        "pretrained": ("pretrained", []),
        "self": (args.self_name, ["model.graph_source=self", *args.self_overrides]),
    }
    metrics: dict[str, dict[int, dict]] = {v: {} for v in VARIANTS}
    for s in args.seeds:
        seeds = [f"seed={s}", *([f"data.seed={s}"] if synthetic else [])]
        for v, (name, more) in variants.items():
            d = runs / f"{name}_{p}_s{s}"
            if args.run:
                train_run(d, *common, *seeds, *more)
            metrics[v][s] = json.loads((d / "metrics.json").read_text())

    result: dict[str, Any] = {
        "preset": p,
        "experiment": exp,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "self_overrides": ["model.graph_source=self", *args.self_overrides],
        "git_revision": git_revision(),
        "variants": {},
        "tests": {},
    }
    if synthetic and p in PRESETS:
        mostpop = []
        for s in args.seeds:
            data = generate(p, s)
            mostpop.append(mostpop_metrics(*data.pairs(TRAIN), *data.pairs(TEST), data.n_items)["Recall@20"])
        result["mostpop_test/Recall@20"] = _stats(mostpop)
    for v in VARIANTS:
        per_seed = [metrics[v][s] for s in args.seeds]
        row: dict[str, Any] = {k: _stats([float(m[k]) for m in per_seed]) for k in KEYS}
        split = [times(m) for m in per_seed]
        row.update({k: _stats([t[k] for t in split]) for k in TIMES})
        row["status"] = [m.get("status", "ok") for m in per_seed]
        row["graph_source"] = [m.get("graph_source") for m in per_seed]
        row["best_epoch"] = [m.get("best_epoch") for m in per_seed]
        row["epochs_run"] = [m.get("epochs_run") for m in per_seed]
        if v == "self":
            row["graph_refreshes"] = [m.get("graph_refreshes") for m in per_seed]
        result["variants"][v] = row
    if len(args.seeds) >= 2:
        for k in KEYS:
            a = result["variants"]["self"][k]["per_seed"]
            b = result["variants"]["pretrained"][k]["per_seed"]
            result["tests"][f"seeds {k}"] = seed_test(a, b)

    seeds_txt = " ".join(map(str, args.seeds))
    lines = []
    if p == "tiny":
        result["note"] = (
            "Smoke check of bench/self_graph.py on the tiny preset (5 epochs per stage): it shows the "
            "script runs end to end, not how the two variants compare."
        )
        lines += [f"**{result['note']}**", ""]
    lines += [
        f"EGRA with a pretrained backbone (`experiment={exp}`, graph_source "
        f"{metrics['pretrained'][args.seeds[0]].get('graph_source')}) vs `model.graph_source=self` "
        f"(no pretraining) on `{p}`, seeds {seeds_txt}; test at the best-valid epoch.",
        f"Command: `python bench/self_graph.py --preset {p} --seeds {seeds_txt} --run"
        + (f" --overrides {' '.join(args.overrides)}" if args.overrides else "")
        + (f" --self-overrides {' '.join(args.self_overrides)}" if args.self_overrides else "")
        + "`",
        "",
        "| variant | " + " | ".join(KEYS + TIMES) + " |",
        "|---|" + "---:|" * (len(KEYS) + len(TIMES)),
    ]
    if "mostpop_test/Recall@20" in result:
        lines.append(
            f"| MostPop | {result['mostpop_test/Recall@20']['mean']:.4f} |"
            + " |" * (len(KEYS) + len(TIMES) - 1)
        )
    for v in VARIANTS:
        r = result["variants"][v]
        cells = [fmt_mean_std(r[k]["mean"], r[k]["std"]) for k in KEYS]
        cells += [f"{r[k]['mean']:.2f}" for k in TIMES]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Times in seconds (means over seeds): pretrain = the backbone's training, graph = S^pt "
        "(built once from the backbone / the raw features, plus self's refreshes), train = EGRA's fit "
        "without the refreshes, total = their sum, wall = the whole run (evaluation included).",
    ]
    if result["tests"]:
        lines += ["", "Paired t-tests over seeds, self − pretrained (two-sided, uncorrected):", ""]
        lines += ["| test | n | mean difference | p (t-test) |", "|---|---:|---:|---:|"]
        for name, t in result["tests"].items():
            lines.append(f"| {name} | {t['n']} | {t['mean_diff']:+.4f} | {fmt_p(t['p'])} |")
    lines += ["", "Per seed, test Recall@20 / NDCG@20 (pretrained → self):", ""]
    for s in args.seeds:
        a, b = metrics["pretrained"][s], metrics["self"][s]
        lines.append(
            f"- seed {s}: {a['test/Recall@20']:.4f} → {b['test/Recall@20']:.4f}, "
            f"{a['test/NDCG@20']:.4f} → {b['test/NDCG@20']:.4f} "
            f"(self: {b.get('graph_refreshes')} refreshes, best epoch {b.get('best_epoch')})"
        )
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"self_graph_{p}.md").write_text(text)
    (out / f"self_graph_{p}.json").write_text(json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    main()
