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


def _short(key: str) -> str:
    """``valid/Recall@20`` -> ``valid Recall@20``, ``test/popgroup0/Recall@20`` -> ``tail Recall@20``,
    ``test/NDCG@10`` -> ``NDCG@10`` (the test table above it says "test")."""
    if key.startswith("test/popgroup0/"):
        return "tail " + key.rsplit("/", 1)[1]
    if key.startswith("test/"):
        return key[len("test/") :]
    return key.replace("/", " ")


def side_by_side(metrics: Mapping[str, float], keys: Sequence[str] | None = None) -> str:
    """A run's metrics next to the ``backbone/``-prefixed ones of its pretrained backbone:
    three lines, the metric names, the backbone's values and the run's relative change."""
    keys = keys or [k for k in metrics if "/" in k and f"backbone/{k}" in metrics]
    model = str(metrics.get("model", "model"))
    rows = [f"backbone {metrics.get('graph_source', '')}".strip(), f"{model} vs backbone"]
    label = max(len(r) for r in rows) + 1
    widths = [max(len(_short(k)), 7) + 2 for k in keys]
    head = " " * label + "".join(f"{_short(k):>{w}}" for k, w in zip(keys, widths))
    base = f"{rows[0]:<{label}}" + "".join(
        f"{metrics[f'backbone/{k}']:>{w}.4f}" for k, w in zip(keys, widths)
    )
    cells = []
    for k, w in zip(keys, widths):
        b, m = metrics[f"backbone/{k}"], metrics[k]
        cells.append(f"{(m - b) / b * 100:>+{w - 1}.1f}%" if b else f"{'':>{w}}")
    return "\n".join([head, base, f"{rows[1]:<{label}}" + "".join(cells)])


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
        print(side_by_side(metrics))
    elif metrics.get("graph_source") == "self":
        print(f"\n{self_graph_line(metrics)}")
    print(f"results: {metrics_path}")
    return metrics_path
