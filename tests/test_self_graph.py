"""``graph.graph_source=self``: EGRA builds ``S^pt`` from its own item vectors while it trains.

The refresh builds the exact kNN graph of the model's current item vectors and the model then
runs on ``enhanced_adjacency`` of it; refreshes happen at the configured epochs only; the whole
pipeline runs without pretraining a backbone and learns; a killed run resumes to the
uninterrupted run's numbers (the current ``S^pt`` travels in the checkpoints); under Lightning's
real DDP launcher every rank trains on the same graph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from egra.data.interactions import TEST, TRAIN
from egra.data.synthetic import generate
from egra.graphs import enhanced_adjacency, interaction_matrix
from egra.metrics.popularity import mostpop_metrics
from egra.models import EGRA
from egra.pipeline.checks import ConfigError, check_config
from egra.pipeline.evaluate import load_module
from egra.pipeline.graph import GraphSpec, pt_graph_builder, refresh_callback
from egra.pipeline.tables import self_graph_line
from egra.pipeline.train import run
from egra.training.callbacks import GraphRefresh, edge_overlap
from egra.training.module import ITEM_GRAPH_KEY, RecommenderModule
from tests.conftest import make_cfg
from tests.test_resume import KillAt, Killed
from tests.toy_models import toy_data, toy_graphs, toy_item_graph

SELF = ["experiment=egra_tiny", "graph.graph_source=self"]
COMPARED = ("test/Recall@20", "test/NDCG@20", "valid/Recall@20", "valid/NDCG@20", "best_epoch", "epochs_run")


def brute_force_pt(x: np.ndarray, k: int, symmetric: bool, weighted: bool) -> np.ndarray:
    """Dense ``S^pt`` of ``x``'s rows by numpy: top-``k`` cosine, self excluded."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    n = len(x)
    rows = np.repeat(np.arange(n), k)
    cols = np.argsort(-sim, axis=1, kind="stable")[:, :k].ravel()
    s = np.zeros((n, n))
    s[rows, cols] = np.maximum(sim[rows, cols], 0) if weighted else 1.0
    return np.maximum(s, s.T) if symmetric else s


class _Strategy:
    def broadcast(self, obj, src=0):
        return obj


class _Module:
    """What GraphRefresh uses of a LightningModule: ``net`` and ``log_dict``."""

    def __init__(self, net):
        self.net, self.logged = net, {}

    def log_dict(self, values, **kwargs):
        self.logged.update(values)


def _trainer(epoch: int) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, is_global_zero=True, strategy=_Strategy())


def _trained_toy(seed: int = 0, **kwargs) -> tuple[dict, EGRA]:
    """A toy EGRA after a few Adam steps (vectors that are not the initial ones)."""
    d = toy_data(seed)
    torch.manual_seed(seed)
    net = EGRA(**d, **toy_graphs(d), **kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    users, items = torch.as_tensor(d["train_users"]), torch.as_tensor(d["train_items"])
    for step in range(3):
        neg = torch.randint(d["n_items"], users.shape, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        net.loss(users, items, neg)["loss"].backward()
        opt.step()
    return d, net


@pytest.mark.parametrize(
    ("symmetric", "weighted", "pt_norm"), [(True, False, "separate"), (False, True, "joint")]
)
def test_refresh_builds_the_knn_graph_of_the_current_item_vectors(tmp_path, symmetric, weighted, pt_norm):
    cfg = make_cfg(
        tmp_path,
        [
            *SELF,
            "graph.k_pt=3",
            f"graph.pt_symmetric={symmetric}",
            f"graph.pt_weighted={weighted}",
            f"model.pt_norm={pt_norm}",
            "graph.device=cpu",
        ],
    )
    spec = GraphSpec.of(cfg.graph, cfg.model)
    d, net = _trained_toy(item_graph=toy_item_graph(20), beta=0.5, pt_norm=pt_norm)
    before = net.item_graph.copy()
    # The item rows the model scores with (they change with S^pt: taken before the refresh).
    items = net.export()[1].numpy()
    refresh = GraphRefresh(every=1, build=pt_graph_builder(cfg, spec))
    module = _Module(net)
    refresh.on_train_epoch_start(_trainer(1), module)

    # The graph is the brute-force kNN graph of those vectors.
    expected = brute_force_pt(items.astype(np.float64), 3, symmetric, weighted)
    got = net.item_graph.toarray()
    np.testing.assert_array_equal(got != 0, expected != 0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # ... and the model's adjacency is the enhanced adjacency of that graph.
    r = interaction_matrix(d["train_users"], d["train_items"], d["n_users"], d["n_items"])
    a_e = enhanced_adjacency(r, net.item_graph, 0.5, pt_norm).toarray()
    np.testing.assert_array_equal(net.adj.a.to_dense().numpy(), a_e)
    # Same numbers as a model built on that graph from the start.
    fresh = EGRA(**d, **toy_graphs(d), item_graph=net.item_graph, beta=0.5, pt_norm=pt_norm)
    fresh.load_state_dict(net.state_dict())
    for a, b in zip(fresh.embeddings(), net.embeddings()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    assert module.logged["graph/edges"] == net.item_graph.nnz
    assert module.logged["graph/overlap"] == pytest.approx(edge_overlap(net.item_graph, before))
    assert 0 <= module.logged["graph/overlap"] < 1 and module.logged["graph/refresh_s"] >= 0
    assert refresh.summary() == {
        "graph_refreshes": 1,
        "graph_refresh_s": round(refresh.refresh_s, 3),
        "graph_refresh_edges": net.item_graph.nnz,
    }


def test_refresh_happens_at_the_configured_epochs_only():
    _, net = _trained_toy()
    calls = []

    def build(x):
        calls.append(x.shape)
        return toy_item_graph(20, seed=len(calls))

    refresh = GraphRefresh(every=3, build=build)
    refreshed = []
    for epoch in range(10):
        n = len(calls)
        refresh.on_train_epoch_start(_trainer(epoch), _Module(net))
        if len(calls) > n:
            refreshed.append(epoch)
    assert refreshed == [3, 6, 9] and calls[0] == (20, 64)  # the model's [I, d] item rows
    assert (net.item_graph != toy_item_graph(20, seed=3)).nnz == 0
    with pytest.raises(ValueError, match="graph_refresh_every"):
        GraphRefresh(every=0, build=build)


def test_no_graph_round_trips_through_a_checkpoint():
    """graph_init=warmup: a checkpoint from before the first refresh restores "no S^pt"."""
    d, net = _trained_toy()
    plain = net.adj.a.to_dense().clone()
    module = RecommenderModule(net, optimizer=torch.optim.Adam)
    module.item_graph_in_checkpoint = True
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert ckpt[ITEM_GRAPH_KEY] is None
    net.set_item_graph(toy_item_graph(20))
    assert net.has_item_graph and not torch.equal(net.adj.a.to_dense(), plain)
    saved: dict = {}
    module.on_save_checkpoint(saved)
    module.on_load_checkpoint(ckpt)
    assert net.item_graph is None and not net.has_item_graph
    assert torch.equal(net.adj.a.to_dense(), plain)
    module.on_load_checkpoint(saved)
    assert (net.item_graph != toy_item_graph(20)).nnz == 0


def test_config_rules(tmp_path):
    check_config(make_cfg(tmp_path, [*SELF, "graph.graph_init=warmup", "graph.graph_refresh_every=1"]))
    for bad, needle in (
        ("graph.graph_refresh_every=0", "graph.graph_refresh_every=0: expected an integer >= 1"),
        ("graph.graph_init=later", "graph.graph_init='later': expected one of raw_features, warmup"),
        ("graph.k_pt=0", "graph.graph_source=none"),
        ("optim.init=backbone", "optim.init=backbone needs a trained backbone"),  # there is none
    ):
        with pytest.raises(ConfigError, match=needle):
            check_config(make_cfg(tmp_path, [*SELF, bad]))
    with pytest.raises(ConfigError, match="graph_source='nope': expected one of .*self, none"):
        check_config(make_cfg(tmp_path, ["model=egra", "graph.graph_source=nope"]))
    assert refresh_callback(make_cfg(tmp_path, ["experiment=egra_tiny"]), GraphSpec()) is None


def test_self_graph_pipeline_pretrains_nothing_and_learns(cfg_factory, capsys):
    cfg = cfg_factory([*SELF, "trainer.max_epochs=30", "logger=csv"])
    metrics = run(cfg)
    assert metrics["status"] == "ok" and metrics["graph_source"] == "self"
    assert "pretrain_s" not in metrics and not any(k.startswith("backbone/") for k in metrics)
    art = Path(cfg.paths.artifact_dir)
    assert not (art / "embeddings").exists()  # no backbone was pretrained
    # S^m of both modalities and the raw features' S^pt to start from.
    graphs = [p for p in (art / "graphs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(graphs) == 3 and metrics["graph_init"] == "raw_features"

    # Refreshed at epochs 5, 10, ..., 25 (every 5, the default) and at no other.
    rows = pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")
    refreshed = rows.dropna(subset=["graph/refresh_s"])
    assert list(refreshed["epoch"]) == [5, 10, 15, 20, 25]
    assert (refreshed["graph/edges"] >= 120 * 10).all() and refreshed["graph/overlap"].between(0, 1).all()
    assert (
        metrics["graph_refreshes"] == 5
        and metrics["graph_refresh_edges"] == refreshed["graph/edges"].iloc[-1]
    )

    d = generate("tiny", 0)
    mostpop = mostpop_metrics(*d.pairs(TRAIN), *d.pairs(TEST), d.n_items, ks=(20,))["Recall@20"]
    assert metrics["test/Recall@20"] > mostpop, (metrics["test/Recall@20"], mostpop)
    out = capsys.readouterr().out
    assert self_graph_line(metrics) in out and "rebuilt 5 times (every 5 epochs" in out


def test_self_before_its_first_refresh_is_graph_source_raw_features(cfg_factory):
    """Same S^pt (one builder for every S^pt) and the same initial weights (no pretraining stage
    to consume or re-seed the RNGs in either): the same run, number for number."""
    base = ["experiment=egra_tiny", "trainer.max_epochs=3"]
    raw = run(cfg_factory([*base, "graph.graph_source=raw_features"], sub="raw"))
    own = run(cfg_factory([*base, "graph.graph_source=self", "graph.graph_refresh_every=10"], sub="self"))
    assert own["graph_refreshes"] == 0 and own["graph_nnz"] == raw["graph_nnz"]
    for key in COMPARED:
        assert own[key] == raw[key], key


@pytest.mark.slow
@pytest.mark.parametrize("init", ["raw_features", "warmup"])
def test_resume_after_a_refresh_matches_uninterrupted(cfg_factory, init):
    """Refresh every 2 epochs, killed at the start of epoch 3: last.ckpt (epoch 2) holds the graph
    rebuilt at epoch 2, which the resumed epoch 3 must train on (no refresh there)."""
    base = [*SELF, f"graph.graph_init={init}", "graph.graph_refresh_every=2", "trainer.max_epochs=5"]
    full = run(cfg_factory(base, sub="full"))
    killed = cfg_factory(
        [*base, f"+callbacks.kill._target_={KillAt.__module__}.KillAt", "+callbacks.kill.epoch=3"],
        sub="resumed",
    )
    out_dir = Path(killed.paths.output_dir)
    with pytest.raises(Killed):
        run(killed)
    ckpt = torch.load(out_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["callbacks"]["GraphRefresh"]["refreshes"] == 1
    assert ckpt[ITEM_GRAPH_KEY] is not None

    resumed = run(cfg_factory([*base, "ckpt_path=last"], sub="resumed"))
    assert json.loads((out_dir / "metrics.json").read_text()) == resumed
    for key in (*COMPARED, "graph_refreshes", "graph_refresh_edges"):
        assert resumed[key] == full[key], key
    assert resumed["epochs_run"] == 5 and resumed["graph_refreshes"] == 2


@pytest.mark.slow
def test_self_graph_under_ddp_launcher_same_graph_on_every_rank(tmp_path):
    """Two CPU ranks under ``trainer=ddp``: rank 0 builds each S^pt and broadcasts it. The DDP
    evaluation (each rank its users, on its own copy of the graph) equals a one-process
    evaluation of the best checkpoint, whose graph comes from the checkpoint."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        *SELF,
        "graph.graph_refresh_every=1",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=3",
        "threads=1",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["graph_refreshes"] == 2 and not (tmp_path / "artifacts" / "embeddings").exists()

    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    L.seed_everything(0)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    best = run_dir / "checkpoints" / "best.ckpt"
    module = load_module(cfg, dm, best)
    saved = torch.load(best, map_location="cpu", weights_only=True)[ITEM_GRAPH_KEY]
    assert module.net.item_graph.nnz == int(saved["data"].numel())
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    single = {
        **trainer.validate(module, datamodule=dm, verbose=False)[0],
        **trainer.test(module, datamodule=dm, verbose=False)[0],
    }
    for key in ("valid/Recall@20", "test/Recall@20", "test/NDCG@20"):
        assert single[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_item_graph_shape_is_checked():
    d, net = _trained_toy()
    with pytest.raises(ValueError, match="item_graph has shape"):
        net.set_item_graph(sp.eye(5, format="csr"))
