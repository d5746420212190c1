"""Artifact cache and the pretrain -> graph stages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from egra.pipeline.cache import ArtifactCache, artifact_key


def _builder(calls, value=1.0):
    def build():
        calls.append(1)
        return {"items": np.full((4, 3), value, dtype=np.float32)}, {"note": "x"}

    return build


def test_key_is_order_independent_and_input_sensitive():
    assert artifact_key(a=1, b={"x": 1, "y": 2}) == artifact_key(b={"y": 2, "x": 1}, a=1)
    assert artifact_key(a=1) != artifact_key(a=2)


def test_hit_miss_and_corruption(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []
    a = cache.get_or_build("emb", "k1", _builder(calls))
    b = cache.get_or_build("emb", "k1", _builder(calls))
    assert len(calls) == 1 and b.reused and not a.reused
    np.testing.assert_array_equal(b.array("items"), np.ones((4, 3), dtype=np.float32))
    cache.get_or_build("emb", "k2", _builder(calls))
    assert len(calls) == 2

    # A corrupted file (content no longer matches the manifest) is rebuilt, not used.
    path = a.path / "items.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    c = cache.get_or_build("emb", "k1", _builder(calls, 2.0))
    assert len(calls) == 3 and not c.reused
    np.testing.assert_array_equal(c.array("items"), np.full((4, 3), 2.0, dtype=np.float32))

    # A partial artifact (killed before its manifest was written) is rebuilt.
    (c.path / "manifest.json").unlink()
    cache.get_or_build("emb", "k1", _builder(calls))
    assert len(calls) == 4
    # An unreadable manifest too.
    (c.path / "manifest.json").write_text("{not json")
    cache.get_or_build("emb", "k1", _builder(calls))
    assert len(calls) == 5


def test_arrays_never_unpickled(tmp_path):
    cache = ArtifactCache(tmp_path)
    art = cache.get_or_build("emb", "k", _builder([]))
    obj = np.array([{"a": 1}], dtype=object)
    np.save(art.path / "items.npy", obj, allow_pickle=True)
    # Make the manifest agree with the planted file so only allow_pickle=False protects us.
    import hashlib

    m = json.loads((art.path / "manifest.json").read_text())
    m["files"]["items"] = hashlib.sha256((art.path / "items.npy").read_bytes()).hexdigest()
    (art.path / "manifest.json").write_text(json.dumps(m))
    # The manifest's shape check opens it without unpickling and rejects it; a direct load refuses too.
    assert cache.get("emb", "k") is None
    with pytest.raises(ValueError, match="pickle"):
        art.array("items")


@pytest.mark.slow
def test_pretrain_and_graph_stages_reuse_and_rekey(cfg_factory):
    from hydra.utils import instantiate

    from egra.pipeline.graph import GraphSpec, build_graphs
    from egra.pipeline.pretrain import backbone_spec, pretrain

    cfg = cfg_factory(["model=egra", "backbones.mgcn.max_epochs=2", "graph.k_pt=3"])
    dm = instantiate(cfg.data)
    dm.setup()
    backbone_graphs = build_graphs(cfg, dm, backbone_spec(cfg, "mgcn"))
    assert set(backbone_graphs.artifacts) == {"S^m/image", "S^m/text"}
    first = pretrain(cfg, dm, "mgcn", backbone_graphs)
    assert not first.reused
    assert first.array("items").shape == (dm.data.n_items, 64)
    assert "test/Recall@20" in first.manifest["metrics"]
    again = pretrain(cfg, dm, "mgcn", backbone_graphs)
    assert again.reused and again.path == first.path

    graphs = build_graphs(cfg, dm, GraphSpec.of(cfg.graph, cfg.model), first)
    g, info = graphs.pretrained, graphs.info
    assert g.shape == (dm.data.n_items, dm.data.n_items)
    assert not info["graph_reused"]
    assert graphs.artifacts["S^m/text"] == backbone_graphs.artifacts["S^m/text"]  # one S^m for both
    assert (g != g.T).nnz == 0  # symmetrised
    assert g.diagonal().sum() == 0  # self excluded
    assert set(np.unique(g.data)) == {1.0}  # binary
    assert (np.diff(g.indptr) >= 3).all()
    graphs2 = build_graphs(cfg, dm, GraphSpec.of(cfg.graph, cfg.model), first)
    assert graphs2.info["graph_reused"] and (graphs2.pretrained != g).nnz == 0
    assert graphs2.names() == graphs.names()

    # Changing k re-keys the graph but not the embeddings.
    cfg.graph.k_pt = 4
    graphs3 = build_graphs(cfg, dm, GraphSpec.of(cfg.graph, cfg.model), first)
    assert not graphs3.info["graph_reused"]
    assert graphs3.info["graph_artifact"] != info["graph_artifact"]
    assert graphs3.names()["S^pt"] != graphs.names()["S^pt"]
    assert graphs3.names()["S^m/image"] == graphs.names()["S^m/image"]

    # Other backbones: raw features and random are cheap and keyed separately.
    raw = pretrain(cfg, dm, "raw_features")
    rnd = pretrain(cfg, dm, "random")
    assert raw.path != rnd.path != first.path
    norms = np.linalg.norm(raw.array("items"), axis=1)
    assert np.allclose(norms, np.sqrt(len(dm.data.features)), atol=1e-4)


def test_changed_data_changes_the_key(cfg_factory):
    from hydra.utils import instantiate

    from egra.pipeline.pretrain import _key

    cfg = cfg_factory(["model=egra"])
    dm = instantiate(cfg.data)
    dm.setup()
    k1 = _key(cfg, "random", dm.data.fingerprint())
    cfg2 = cfg_factory(["model=egra", "data.seed=5"], sub="other")
    dm2 = instantiate(cfg2.data)
    dm2.setup()
    assert _key(cfg2, "random", dm2.data.fingerprint()) != k1
    cfg.backbones.random.dim = 32
    assert _key(cfg, "random", dm.data.fingerprint()) != k1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_race_for_one_artifact(tmp_path):
    """Two processes want one artifact at once: it is built and written once (``collective``:
    built by both, as ranks of one DDP fit, written once), both read the same complete files,
    and a rank that cannot see rank 0's directory gets a clear error. Modes: see race_worker."""
    import multiprocessing as mp

    from tests.race_worker import MODES, race

    root, results = str(tmp_path / "artifacts"), tmp_path / "results"
    ctx = mp.get_context("spawn")
    port, start_at = _free_port(), time.time() + 4.0
    procs = [ctx.Process(target=race, args=(r, 2, root, port, str(results), start_at)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "deadlock: a process did not finish"
    assert [p.exitcode for p in procs] == [0, 0]
    for mode in MODES:
        events = sorted((results / mode / "events.log").read_text().split("\n")[:-1])
        out = [json.loads((results / mode / f"{r}.json").read_text()) for r in range(2)]
        if mode == "unshared":
            assert "error" not in out[0]
            assert "cannot see" in out[1]["error"] and "shares" in out[1]["error"]
            continue
        by = out[0]["by"]
        want = {
            "lock": [f"build {by}", f"put {by}"],  # whoever took the lock; the other reused
            "group": ["build 0", "put 0"],  # rank 0 builds, rank 1 waits at the barrier
            "collective": ["build 0", "build 1", "put 0"],
        }[mode]
        assert events == want, mode
        assert out[0]["path"] == out[1]["path"] and out[1]["by"] == by, mode
        assert out[0]["x"] == out[1]["x"] == list(range(10)), mode
        names = [
            p.name for p in (tmp_path / "artifacts" / mode / "emb").iterdir() if not p.name.endswith(".lock")
        ]
        assert names == ["k"], mode


def test_pretrain_entry_point_builds_the_backbones_graphs_first(cfg_factory, capsys):
    """``egra-pretrain``: a backbone without item graphs (LightGCN) and one with (MGCN)."""
    from egra.pipeline.pretrain import run as pretrain_run

    art = pretrain_run(cfg_factory(["backbone=lightgcn", "backbones.lightgcn.max_epochs=1"], "pretrain"))
    assert art.array("items").shape[1] == 64 and not art.reused
    assert art.manifest["config"]["model"]["_target_"] == "egra.models.LightGCN"
    assert "wrote lightgcn embeddings" in capsys.readouterr().out
    cfg = cfg_factory(["backbone=mgcn", "backbones.mgcn.max_epochs=1"], "pretrain")
    mgcn = pretrain_run(cfg)
    graphs = sorted(
        p.name for p in (Path(cfg.paths.artifact_dir) / "graphs").iterdir() if not p.name.startswith(".")
    )
    assert len(graphs) == 2  # S^m of image and text, built by the graph stage
    assert pretrain_run(cfg).path == mgcn.path  # the second call reuses it
