"""Plain-text result tables for the terminal and Markdown reports, and the report stage of a run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from egra.pipeline.io import write_json

METRIC_ORDER = ("Recall", "NDCG", "Precision", "MAP", "Hit")


def metrics_table(
    metrics: Mapping[str, float], prefix: str = "test", ks: Sequence[int] = (5, 10, 20, 50)
) -> str:
    """One row per metric, one column per K, for keys ``{prefix}/{Metric}@{K}``."""
    names = [m for m in METRIC_ORDER if any(f"{prefix}/{m}@{k}" in metrics for k in ks)]
    header = f"{prefix:<10}" + "".join(f"{'@' + str(k):>9}" for k in ks)
    lines = [header, "-" * len(header)]
    for name in names:
        cells = "".join(
            f"{metrics[f'{prefix}/{name}@{k}']:>9.4f}" if f"{prefix}/{name}@{k}" in metrics else f"{'':>9}"
            for k in ks
        )
        lines.append(f"{name:<10}{cells}")
    return "\n".join(lines)


def comparison_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    """Markdown table: one row per named result, one column per metric key."""
    head = "| run | " + " | ".join(columns) + " |"
    sep = "|---|" + "|".join("---:" for _ in columns) + "|"
    body = []
    for name, m in rows.items():
        cells = " | ".join(f"{m[c]:.4f}" if isinstance(m.get(c), (int, float)) else "" for c in columns)
        body.append(f"| {name} | {cells} |")
    return "\n".join([head, sep, *body])


def side_by_side(metrics: Mapping[str, float], keys: Sequence[str] | None = None) -> str:
    """A run's metrics next to the ``backbone/``-prefixed ones of its pretrained backbone."""
    keys = keys or [k for k in metrics if "/" in k and f"backbone/{k}" in metrics]
    width = max(len(k) for k in keys) + 2 if keys else 10
    lines = [f"{'metric':<{width}}{'backbone':>10}{metrics.get('model', 'model'):>10}{'change':>9}"]
    for k in keys:
        b, m = metrics[f"backbone/{k}"], metrics[k]
        change = f"{(m - b) / b * 100:+.1f}%" if b else ""
        lines.append(f"{k:<{width}}{b:>10.4f}{m:>10.4f}{change:>9}")
    return "\n".join(lines)


def self_graph_line(metrics: Mapping[str, Any]) -> str:
    """What a ``graph_source=self`` run did instead of pretraining a backbone (no side-by-side)."""
    n, every = metrics.get("graph_refreshes", 0), metrics.get("graph_refresh_every", "?")
    start = {"raw_features": "the raw features' graph", "warmup": "no S^pt"}.get(
        str(metrics.get("graph_init")), str(metrics.get("graph_init"))
    )
    return (
        f"{metrics['model']} built S^pt from its own item vectors (no pretrained backbone): "
        f"started with {start}, rebuilt {n} time{'s' if n != 1 else ''} (every {every} epochs, "
        f"{float(metrics.get('graph_refresh_s', 0.0)):.1f}s)"
    )


def report(cfg: DictConfig, metrics: Mapping[str, Any], out_dir: Path) -> Path:
    """Stage: report — ``metrics.json`` and ``config_resolved.yaml`` in the run directory and
    the tables on the terminal. Called on rank 0 only: one file, one table per run."""
    metrics_path = out_dir / "metrics.json"
    write_json(metrics_path, dict(metrics))
    OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
    print(
        f"\n{metrics['model']} on {metrics['dataset']}: best epoch {metrics['best_epoch']}, "
        f"{metrics['fit_time_s']:.1f}s training"
    )
    print(metrics_table(metrics, "test", tuple(cfg.eval.ks)))
    if any(k.startswith("backbone/") for k in metrics):
        print(f"\n{metrics['model']} next to its backbone ({metrics['graph_source']}, pretrained):")
        print(side_by_side(metrics))
    elif metrics.get("graph_source") == "self":
        print(f"\n{self_graph_line(metrics)}")
    print(f"results: {metrics_path}")
    return metrics_path
