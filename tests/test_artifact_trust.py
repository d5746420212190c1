"""Artifacts and run files: metadata checked against the arrays, shared-cache file modes, a
visible wait on a lock, a logged cold-user filter."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from egra.pipeline.cache import MANIFEST, ArtifactCache
from egra.pipeline.io import write_json


def _edit_manifest(path, edit) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _pretrained_graph(cfg, dm):
    """S^pt and the graph stage's info, as the train pipeline builds them."""
    from egra.pipeline.graph import GraphSpec, build_graphs
    from egra.pipeline.pretrain import pretrain

    spec = GraphSpec.of(cfg.graph, cfg.model)
    graphs = build_graphs(cfg, dm, spec, pretrain(cfg, dm, spec.pretrained_source))
    return graphs.pretrained, graphs.info


def test_graph_metadata_comes_from_the_arrays_and_a_short_manifest_is_rebuilt(cfg_factory):
    from hydra.utils import instantiate

    cfg = cfg_factory(["model=egra", "graph.graph_source=random", "graph.k_pt=3"])
    dm = instantiate(cfg.data)
    dm.setup()
    g, info = _pretrained_graph(cfg, dm)
    graph_dir = Path(info["graph_artifact"])
    _edit_manifest(graph_dir, lambda m: m.update(nnz=1))
    _, again = _pretrained_graph(cfg, dm)
    assert again["graph_reused"] and again["graph_nnz"] == g.nnz != 1

    # A manifest that lost an entry (with a matching file list otherwise): rebuilt, no KeyError.
    _edit_manifest(graph_dir, lambda m: m["files"].pop("indptr"))
    g2, rebuilt = _pretrained_graph(cfg, dm)
    assert not rebuilt["graph_reused"] and (g2 != g).nnz == 0

    # Shapes that disagree with the arrays: rebuilt.
    _edit_manifest(graph_dir, lambda m: m["shapes"].update(indptr=[3]))
    _, rebuilt = _pretrained_graph(cfg, dm)
    assert not rebuilt["graph_reused"]


def test_files_get_the_umask_mode_not_0600(tmp_path):
    from egra.data.synthetic import ensure_synthetic

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        art = ArtifactCache(tmp_path).put("emb", "k", {"items": np.zeros((2, 2), np.float32)}, {})
        data = ensure_synthetic(tmp_path / "data", "tiny", 0)
    finally:
        os.umask(old)
    files = [tmp_path / "metrics.json", art.path / "items.npy", art.path / MANIFEST, *data.iterdir()]
    assert len(files) > 4
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_waiting_on_a_lock_is_logged(tmp_path, caplog):
    cache = ArtifactCache(tmp_path)
    lock = tmp_path / "emb" / ".k.lock"
    lock.parent.mkdir(parents=True)
    result = {}
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with caplog.at_level(logging.INFO, logger="egra.pipeline.cache"):

            def build():
                return {"items": np.ones((2, 2), np.float32)}, {}

            worker = threading.Thread(target=lambda: result.update(a=cache.get_or_build("emb", "k", build)))
            worker.start()
            deadline = time.time() + 10
            while "waiting for emb artifact k" not in caplog.text and time.time() < deadline:
                time.sleep(0.02)
            assert "another process is building it" in caplog.text
            assert "a" not in result
            fcntl.flock(held, fcntl.LOCK_UN)
            worker.join(10)
    assert not result["a"].reused


def test_dropped_cold_users_are_logged(tmp_path, caplog):
    from egra.data.mmrec import load_mmrec
    from tests.test_data_reader import ROWS, good_lines, write_inter

    rows = [*ROWS, (3, 0, 1), (3, 1, 2)]  # user 3: valid and test rows only
    write_inter(tmp_path / "ds", good_lines(rows))
    with caplog.at_level(logging.INFO, logger="egra.data.mmrec"):
        data = load_mmrec(tmp_path / "ds")
    assert 3 not in set(data.users)
    assert "dropped 2 valid/test rows of 1 users without any train row (e.g. userID 3" in caplog.text


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
