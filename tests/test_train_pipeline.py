"""End-to-end train stage on the tiny preset: metrics.json, checkpoints, resume, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from egra.pipeline.train import run

KEYS = ["valid/Recall@20", "test/Recall@20", "test/NDCG@20", "best_epoch", "wall_time_s"]


@pytest.mark.parametrize("model", ["bpr", "lightgcn"])
def test_run_writes_metrics(cfg_factory, model):
    cfg = cfg_factory([f"model={model}", "trainer.max_epochs=3"])
    metrics = run(cfg)
    written = json.loads((__import__("pathlib").Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written == metrics
    for key in KEYS:
        assert key in metrics
    for name in ["Recall", "NDCG", "Precision", "MAP", "Hit"]:
        for k in [5, 10, 20, 50]:
            assert 0.0 <= metrics[f"test/{name}@{k}"] <= 1.0
    # Recall can only grow with K.
    assert metrics["test/Recall@5"] <= metrics["test/Recall@10"] <= metrics["test/Recall@50"]
    assert 0 <= metrics["best_epoch"] < 3
    for g in range(5):
        assert f"test/popgroup{g}/Recall@20" in metrics


def test_seeded_runs_reproduce(cfg_factory):
    a = run(cfg_factory(["trainer.max_epochs=2"], sub="a"))
    b = run(cfg_factory(["trainer.max_epochs=2"], sub="b"))
    assert a["test/Recall@20"] == b["test/Recall@20"]
    assert a["valid/NDCG@20"] == b["valid/NDCG@20"]


def test_skip_if_done(cfg_factory):
    cfg = cfg_factory(["trainer.max_epochs=1"])
    first = run(cfg)
    again = run(cfg)
    assert again == first


def test_learns_something(cfg_factory):
    """LightGCN trained a few epochs beats the untrained model on the planted data."""
    trained = run(cfg_factory(["trainer.max_epochs=15", "optim.optimizer.lr=0.01"], sub="t"))
    untrained = run(cfg_factory(["trainer.max_epochs=1", "optim.optimizer.lr=1e-9"], sub="u"))
    assert trained["test/Recall@20"] > untrained["test/Recall@20"] + 0.02


@pytest.mark.slow
def test_cli_subprocess(tmp_path):
    """The console entry point composes overrides and honours hydra.run.dir."""
    run_dir = tmp_path / "cli-run"
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        "data=synthetic",
        "data.preset=tiny",
        "model=lightgcn",
        "trainer.max_epochs=2",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/NDCG@20" in metrics
    assert "Recall" in out.stdout
    # A quiet console (egra.cli.console): each record once, no FAISS loader or advert lines.
    console = (out.stdout + out.stderr).splitlines()
    bars = [line for line in console if "━" in line]
    table_start = next(i for i, line in enumerate(console) if line.startswith("test ") and "@5" in line)
    rest = [line for line in console[: table_start - 2] if line.strip() and line not in bars]
    assert len(rest) <= 15, "\n".join(rest)
    assert not [
        line for line in console if line.startswith("INFO: ") or "faiss.loader" in line or "Tip:" in line
    ]


def test_unknown_config_key_is_named(tmp_path):
    from hydra.errors import ConfigCompositionException

    from tests.conftest import make_cfg

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        make_cfg(tmp_path, ["model.no_such_key=1"])


def test_graphs_of_the_data_are_built_before_the_backbones_fit(cfg_factory, monkeypatch):
    """EGRA on a LightGCN backbone (which needs no S^m of its own): EGRA's S^m is built before
    the backbone's fit, so after that fit only S^pt (the backbone's vectors) is searched. Under
    DDP, a FAISS build between two fits holds every other rank at a barrier."""
    import lightning as L

    from egra.graphs import knn

    events: list[str] = []
    real_search, real_fit = knn._search, L.Trainer.fit

    def search(x, k, *, exclude_self, **kw):
        events.append("S^pt" if exclude_self else "S^m")  # S^m includes the item itself
        return real_search(x, k, exclude_self=exclude_self, **kw)

    def fit(self, *args, **kwargs):
        events.append("fit")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(knn, "_search", search)
    monkeypatch.setattr(L.Trainer, "fit", fit)
    cfg = cfg_factory(
        ["model=egra", "graph.graph_source=lightgcn", "graph.k_pt=3", "backbones.lightgcn.max_epochs=1"]
        + ["trainer.max_epochs=1"]
    )
    run(cfg)
    first_fit = events.index("fit")
    assert events.count("fit") == 2 and "S^m" in events[:first_fit]
    assert events[first_fit + 1 :] == ["S^pt", "fit"]
