"""Issue-4 comparison on the generated `small` preset: LightGCN, MGCN, EGRA and its ablations.

Runs (unless their metrics.json exists) and tabulates, for seeds S (data seed = training seed = S):
    egra-train <recipe of name> seed=S data.seed=S threads=1 hydra.run.dir=<out>/<name>_sS
(``egra_small`` = ``model=egra``, ``mgcn_small`` = ``model=mgcn``, ``lightgcn_small`` = ``model=lightgcn``, the
others ``experiment=<name>``)
MGCN appears twice: standalone (`mgcn_small`) and as EGRA's pretrained backbone (`backbone/...`
keys in EGRA's metrics.json; same model and defaults, trained inside EGRA's pipeline). MostPop
(training popularity, computed here) is a reference row. Writes <out>/comparison.json and
bench/results/small_comparison.md (means and a per-seed table).

    python bench/small_comparison.py --out /tmp/exp --seeds 0 1 2 [--run] [--no-ablations]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from egra.data.synthetic import GENERATOR_VERSION
from runs import train_run

MAIN = ["egra_small", "egra_no_enhanced_graph", "lightgcn_small", "mgcn_small"]
ABLATIONS = [
    "egra_fixed_uniform",
    "egra_entity_only",
    "egra_epoch_only",
    "egra_graph_random",
    "egra_graph_raw_features",
    "egra_graph_lightgcn",
]
KEYS = [
    "test/Recall@20",
    "test/NDCG@20",
    "test/popgroup0/Recall@20",
    "test/popgroup0/NDCG@20",
    "valid/Recall@20",
]


# The labels of the results table; the baselines are a model on the default (small) data.
RECIPES = {"egra_small": "model=egra", "lightgcn_small": "model=lightgcn", "mgcn_small": "model=mgcn"}


def run(out: Path, name: str, seed: int) -> None:
    recipe = RECIPES.get(name, f"experiment={name}")
    train_run(out / f"{name}_s{seed}", recipe, f"seed={seed}", f"data.seed={seed}", check=False)


def collect(out: Path, seeds: list[int]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for name in MAIN + ABLATIONS:
        for s in seeds:
            p = out / f"{name}_s{s}" / "metrics.json"
            if not p.exists():
                continue
            m = json.loads(p.read_text())
            rows.setdefault(name, []).append({k: m[k] for k in KEYS} | {"seed": s, "epochs": m["epochs_run"]})
            if name == "egra_small":  # its backbone is the MGCN baseline
                bb = {k: m.get(f"backbone/{k}") for k in KEYS}
                rows.setdefault("mgcn (EGRA's backbone)", []).append(bb | {"seed": s})
    return rows


def mostpop(seed: int) -> dict:
    """Reference: rank every user's unseen items by training popularity (same split and metrics)."""
    import numpy as np
    import torch

    from egra.data.interactions import TEST, TRAIN
    from egra.data.synthetic import generate
    from egra.metrics import ranking_metrics

    d = generate("small", seed)
    tr = d.split == TRAIN
    counts = np.bincount(d.items[tr], minlength=d.n_items).astype(np.float64)
    scores = np.tile(counts, (d.n_users, 1))
    scores[d.users[tr], d.items[tr]] = -np.inf
    topk = torch.from_numpy(np.argsort(-scores, axis=1, kind="stable")[:, :20].copy())
    te = d.split == TEST
    m = ranking_metrics(
        topk, torch.from_numpy(d.users[te]), torch.from_numpy(d.items[te]), d.n_items, ks=[20]
    )
    return {k: None for k in KEYS} | {
        "test/Recall@20": m["Recall@20"],
        "test/NDCG@20": m["NDCG@20"],
        "seed": seed,
    }


def fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return ""
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("logs/small_comparison"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--run", action="store_true", help="train what is missing first")
    ap.add_argument("--no-ablations", action="store_true", help="run and tabulate the main models only")
    args = ap.parse_args()
    if args.run:
        for s in args.seeds:
            for name in MAIN:
                run(args.out, name, s)
        for s in [] if args.no_ablations else args.ablation_seeds:
            for name in ABLATIONS:
                run(args.out, name, s)
    rows = collect(args.out, args.seeds)
    rows["mostpop (reference)"] = [mostpop(s) for s in args.seeds]
    order = [
        "mostpop (reference)",
        "lightgcn_small",
        "mgcn_small",
        "mgcn (EGRA's backbone)",
        "egra_small",
        "egra_no_enhanced_graph",
        *ABLATIONS,
    ]
    lines = ["| model | seeds | " + " | ".join(KEYS) + " |", "|---|---:|" + "---:|" * len(KEYS)]
    for name in order:
        if name in rows:
            r = rows[name]
            cells = " | ".join(fmt([x[k] for x in r]) for k in KEYS)
            lines.append(f"| {name} | {','.join(str(x['seed']) for x in r)} | {cells} |")
    # per seed (paired: same data and training seed), test Recall@20 / NDCG@20 / popgroup0 Recall@20
    per = [k for k in order if k in rows]
    seeds_seen = sorted({x["seed"] for k in per for x in rows[k]})
    short = ["test/Recall@20", "test/NDCG@20", "test/popgroup0/Recall@20"]
    lines += ["", "Per seed (test Recall@20 / NDCG@20 / popgroup0 Recall@20):", ""]
    lines += ["| seed | " + " | ".join(per) + " |", "|---:|" + "---:|" * len(per)]
    for s in seeds_seen:
        cells = []
        for k in per:
            x = next((x for x in rows[k] if x["seed"] == s), None)
            vals = [x.get(m) if x else None for m in short]
            cells.append(" / ".join("" if v is None else f"{v:.4f}" for v in vals))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2))
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/small_comparison.md").write_text(
        f"Generated `small` preset (generator version {GENERATOR_VERSION}); test metrics at the best-valid epoch; "
        "popgroup0 = least popular fifth of the interactions.\n"
        f"Command: `python bench/small_comparison.py --run --out <dir> --seeds {' '.join(map(str, args.seeds))}"
        f"{' --no-ablations' if args.no_ablations else ''}`\n\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
