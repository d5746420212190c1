"""Issue-11 diagnosis: why EGRA trails its MGCN backbone, measured on a generated preset.

For each setting, EGRA trains for at most ``--epochs`` epochs (early stopping as usual) with the
`TermGradients` callback: per epoch, the gradient norms of BPR + L2 and of λ·L_align on
the shared ID tables, the BPR and alignment losses, the alignment degrees (mean cosine of
behavior and modality views) and valid Recall@20. It also measures how much of each
item's degree `S^pt` takes in the enhanced graph and how it changes the user-item message
weights (hypothesis 1). Writes bench/results/egra_diagnosis.json and .md.

    python bench/egra_diagnosis.py [--preset small] [--seed 0] [--epochs 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np

from egra.experiments import launch

SETTINGS = {
    "λ_max=0.01 (joint, raw)": ["model.lambda_max=0.01"],
    "λ_max=0.1 (joint, raw)": ["model.lambda_max=0.1"],
    "λ_max=0.1, align_scale=chance": ["model.lambda_max=0.1", "model.align_scale=chance"],
    "λ_max=0.01, pt_norm=separate β=0.5": [
        "model.lambda_max=0.01",
        "model.pt_norm=separate",
        "model.beta=0.5",
    ],
    "λ=0 (BPR only, joint)": ["model.lambda_max=0", "model.lambda_min=0"],
}
COLUMNS = [
    "align/lambda",
    "diag/grad_bpr",
    "diag/grad_align",
    "diag/grad_ratio",
    "train/loss_bpr",
    "train/loss_align",
    "align/degree_user",
    "align/degree_item",
    "valid/Recall@20",
]


def run(out: Path, name: str, overrides: list[str], preset: str, seed: int, epochs: int) -> Path:
    d = out / re.sub(r"[^A-Za-z0-9.]+", "_", name.replace("λ", "lambda")).strip("_")
    if (d / "metrics.json").is_file():
        return d
    launch.train(
        [
            f"hydra.run.dir={d}",
            "threads=1",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "experiment=egra_small",
            f"data.preset={preset}",
            f"seed={seed}",
            f"data.seed={seed}",
            f"trainer.max_epochs={epochs}",
            "callbacks.collapse_guard=null",
            "+callbacks.term_gradients._target_=egra.training.callbacks.TermGradients",
            *overrides,
        ],
        out / f"{d.name}.log",
    )
    return d


def curves(run_dir: Path) -> dict[int, dict[str, float]]:
    by_epoch: dict[int, dict[str, float]] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            e = int(row["epoch"])
            for k in COLUMNS:
                if row.get(k):
                    by_epoch.setdefault(e, {})[k] = float(row[k])
    return by_epoch


def degree_shares(preset: str, seed: int, graph_csr) -> dict[str, float]:
    """Hypothesis 1: S^pt's share of item degrees and the user-item weight change under joint norm."""
    from egra.data.interactions import TRAIN
    from egra.data.synthetic import generate
    from egra.graphs import enhanced_adjacency, interaction_matrix, normalized_bipartite

    d = generate(preset, seed)
    u, i = d.pairs(TRAIN)
    r = interaction_matrix(u, i, d.n_users, d.n_items)
    s_deg = np.asarray(graph_csr.sum(axis=1)).ravel()
    r_deg = np.asarray(r.sum(axis=0)).ravel()
    plain = normalized_bipartite(r)[: d.n_users, d.n_users :]
    joint = enhanced_adjacency(r, graph_csr, 1.0, "joint")[: d.n_users, d.n_users :]
    ratio = joint.data / plain.data  # same sparsity pattern (the user-item block)
    return {
        "train interactions per item (mean)": float(r_deg.mean()),
        "S^pt neighbours per item (mean)": float(s_deg.mean()),
        "S^pt share of item degree (mean)": float((s_deg / (s_deg + r_deg)).mean()),
        "user-item weight, joint / plain (mean)": float(ratio.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("logs/egra_diagnosis"))
    args = ap.parse_args()
    results: dict[str, dict] = {}
    for name, ov in SETTINGS.items():
        d = run(args.out, name, ov, args.preset, args.seed, args.epochs)
        m = json.loads((d / "metrics.json").read_text())
        results[name] = {
            "overrides": ov,
            "curves": curves(d),
            "best_epoch": m["best_epoch"],
            "valid/Recall@20": m["valid/Recall@20"],
            "test/Recall@20": m["test/Recall@20"],
            "graph_artifact": m.get("graph_artifact"),
        }
    graph_dir = next((r["graph_artifact"] for r in results.values() if r.get("graph_artifact")), None)
    shares = {}
    if graph_dir:
        import scipy.sparse as sp

        a = {k: np.load(Path(graph_dir) / f"{k}.npy") for k in ("data", "indices", "indptr")}
        n = len(a["indptr"]) - 1
        shares = degree_shares(
            args.preset, args.seed, sp.csr_matrix((a["data"], a["indices"], a["indptr"]), (n, n))
        )
    report = {
        "preset": args.preset,
        "seed": args.seed,
        "epochs": args.epochs,
        "degrees": shares,
        "runs": results,
    }
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/egra_diagnosis.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"EGRA diagnosis on generated `{args.preset}` (seed {args.seed}), at most {args.epochs} epochs.",
        f"Command: `python bench/egra_diagnosis.py --preset {args.preset} --seed {args.seed} --epochs {args.epochs}`",
        "",
        "Enhanced graph (k_pt 10, symmetrised, β = 1): "
        + "; ".join(f"{k} {v:.3f}" for k, v in shares.items()),
        "",
    ]
    show = [0, 1, 2, 5, 10, 15, 20, 30, args.epochs - 1]
    for name, r in results.items():
        lines += [
            f"### {name}",
            f"best epoch {r['best_epoch']}, valid Recall@20 {r['valid/Recall@20']:.4f}, test Recall@20 {r['test/Recall@20']:.4f}",
            "",
            "| epoch | " + " | ".join(COLUMNS) + " |",
            "|---:|" + "---:|" * len(COLUMNS),
        ]
        for e in show:
            c = r["curves"].get(e)
            if c:
                lines.append(
                    f"| {e} | " + " | ".join(f"{c[k]:.4g}" if k in c else "" for k in COLUMNS) + " |"
                )
        lines.append("")
    Path("bench/results/egra_diagnosis.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
