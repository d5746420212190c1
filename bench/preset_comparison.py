"""EGRA with its shipped defaults against MGCN with its defaults, on a generated preset, over seeds.

For each seed S (data seed = training seed = S) two runs, unless their metrics.json exists:
    egra-train model=egra data.preset=<P> seed=S data.seed=S threads=1   -> <runs>/<egra>_<P>_sS
    egra-train model=mgcn data.preset=<P> seed=S data.seed=S threads=1   -> <runs>/mgcn_<P>_sS
EGRA's own backbone is MGCN with the same defaults and seed, so the standalone MGCN is the model
EGRA has to beat. With --freedom, FREEDOM with its defaults too (model=freedom ->
<runs>/freedom_<P>_sS), tested against EGRA over seeds. Paired tests (egra.pipeline.compare.paired_tests): over seeds on the test
metric, and per user on each test user's metric (users pooled over the seeds' datasets).
Writes bench/results/defaults_<P>.{md,json}. This is defaults against defaults; `make compare`
gives every model the same tuning budget first.

    python bench/preset_comparison.py --preset small --seeds 0 1 2 3 4 --runs logs/preset_comparison [--run] [--freedom]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from egra.data.interactions import TEST, TRAIN
from egra.data.synthetic import generate
from egra.metrics.popularity import mostpop_metrics
from egra.pipeline.compare import paired_tests
from egra.pipeline.io import PER_USER_FILE, git_revision
from runs import train_run

KEYS = ["test/Recall@20", "test/NDCG@20", "test/popgroup0/Recall@20", "valid/Recall@20"]


def run(runs: Path, name: str, recipe: str, preset: str, seed: int) -> Path:
    d = runs / f"{name}_{preset}_s{seed}"
    return train_run(d, recipe, f"data.preset={preset}", f"seed={seed}", f"data.seed={seed}")


def per_user(d: Path, seed: int, metric: str) -> dict[tuple[int, int], float]:
    f = np.load(d / PER_USER_FILE)
    return {(seed, int(u)): float(v) for u, v in zip(f["users"], f[metric])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--runs", type=Path, default=Path("logs/preset_comparison"))
    ap.add_argument("--egra-name", default="egra", help="run-directory prefix of the EGRA runs")
    ap.add_argument("--run", action="store_true", help="train what is missing first")
    ap.add_argument("--freedom", action="store_true", help="add FREEDOM (model=freedom) beside them")
    args = ap.parse_args()
    p = args.preset
    models = [("EGRA", args.egra_name, "model=egra"), ("MGCN", "mgcn", "model=mgcn")]
    if args.freedom:
        models.append(("FREEDOM", "freedom", "model=freedom"))
    dirs: dict[str, dict[int, Path]] = {label: {} for label, _, _ in models}
    for s in args.seeds:
        for label, name, exp in models:
            d = args.runs / f"{name}_{p}_s{s}"
            if args.run:
                d = run(args.runs, name, exp, p, s)
            dirs[label][s] = d
    metrics = {
        m: {s: json.loads((d / "metrics.json").read_text()) for s, d in ds.items()} for m, ds in dirs.items()
    }
    result: dict = {
        "preset": p,
        "seeds": args.seeds,
        "git_revision": git_revision(),
        "models": {},
        "tests": {},
    }
    mostpop = []
    for s in args.seeds:
        d = generate(p, s)
        mostpop.append(mostpop_metrics(*d.pairs(TRAIN), *d.pairs(TEST), d.n_items)["Recall@20"])
    result["models"]["MostPop"] = {"test/Recall@20": {"mean": float(np.mean(mostpop)), "per_seed": mostpop}}
    for label, per_seed in metrics.items():
        row = {}
        for k in KEYS:
            vals = [per_seed[s].get(k) for s in args.seeds]
            row[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)), "per_seed": vals}
        row["status"] = [per_seed[s].get("status", "ok") for s in args.seeds]
        result["models"][label] = row
    for k in ("test/Recall@20", "test/NDCG@20", "test/popgroup0/Recall@20"):
        a = result["models"]["EGRA"][k]["per_seed"]
        b = result["models"]["MGCN"][k]["per_seed"]
        result["tests"][f"seeds {k}"] = paired_tests(np.array(a), np.array(b))
    if args.freedom:
        per_seed = {m: result["models"][m] for m in ("EGRA", "FREEDOM")}
        result["tests_freedom"] = {
            f"seeds {k}": paired_tests(
                np.array(per_seed["EGRA"][k]["per_seed"]), np.array(per_seed["FREEDOM"][k]["per_seed"])
            )
            for k in ("test/Recall@20", "test/NDCG@20")
        }
    for metric in ("Recall@20", "NDCG@20"):
        ea, mb = {}, {}
        for s in args.seeds:
            ea.update(per_user(dirs["EGRA"][s], s, metric))
            mb.update(per_user(dirs["MGCN"][s], s, metric))
        users = sorted(set(ea) & set(mb))
        result["tests"][f"users test/{metric}"] = paired_tests(
            np.array([ea[u] for u in users]), np.array([mb[u] for u in users])
        )
    lines = [
        f"EGRA (shipped defaults) vs MGCN{' and FREEDOM' if args.freedom else ''} (defaults) on generated `{p}`, seeds {' '.join(map(str, args.seeds))} "
        "(data seed = training seed); test at the best-valid epoch.",
        f"Command: `python bench/preset_comparison.py --preset {p} --seeds {' '.join(map(str, args.seeds))} --run"
        + (" --freedom`" if args.freedom else "`"),
        "",
        "| model | " + " | ".join(KEYS) + " |",
        "|---|" + "---:|" * len(KEYS),
        f"| MostPop | {result['models']['MostPop']['test/Recall@20']['mean']:.4f} |  |  |  |",
    ]
    for label in ("MGCN", "FREEDOM", "EGRA") if args.freedom else ("MGCN", "EGRA"):
        r = result["models"][label]
        lines.append(
            f"| {label} | " + " | ".join(f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}" for k in KEYS) + " |"
        )
    lines += ["", "Paired tests, EGRA − MGCN (two-sided):", ""]
    lines += ["| test | n | mean difference | p (t-test) | p (Wilcoxon) |", "|---|---:|---:|---:|---:|"]
    for name, t in result["tests"].items():
        lines.append(
            f"| {name} | {t['n']} | {t['mean_diff']:+.4f} | {t['p_ttest']:.3g} | {t['p_wilcoxon']:.3g} |"
        )
    for name, t in result.get("tests_freedom", {}).items():
        lines.append(
            f"| EGRA − FREEDOM {name} | {t['n']} | {t['mean_diff']:+.4f} | {t['p_ttest']:.3g} | {t['p_wilcoxon']:.3g} |"
        )
    lines += ["", "Per seed, test Recall@20 / NDCG@20 (MGCN → EGRA):", ""]
    for s in args.seeds:
        m, e = metrics["MGCN"][s], metrics["EGRA"][s]
        lines.append(
            f"- seed {s}: {m['test/Recall@20']:.4f} → {e['test/Recall@20']:.4f}, "
            f"{m['test/NDCG@20']:.4f} → {e['test/NDCG@20']:.4f}"
        )
    text = "\n".join(lines) + "\n"
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"defaults_{p}.md").write_text(text)
    (out / f"defaults_{p}.json").write_text(json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    main()
