"""Stage 2 — the pretrained item-item graph ``S^pt`` from a backbone's item vectors.

FAISS top-``k_pt`` neighbours by cosine (self excluded), binary or cosine-weighted,
symmetrised or directed (``egra-method.md``), cached as an artifact keyed by the
embedding artifact and the graph parameters.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from omegaconf import DictConfig

from egra.graphs.knn import knn_graph
from egra.pipeline.cache import ArtifactCache, artifact_key

log = logging.getLogger(__name__)
GRAPH_FILES = ("data", "indices", "indptr")
# Backbone metrics carried into the EGRA run's metrics.json (for side-by-side tables).
BACKBONE_KEYS = (
    "valid/Recall@20",
    *(f"test/{m}@{k}" for m in ("Recall", "NDCG") for k in (10, 20, 50)),
    "test/popgroup0/Recall@20",
)


def _to_csr(art, n: int) -> sp.csr_matrix:
    a = art.arrays()
    return sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(n, n))


def build_item_graph(
    items: np.ndarray, k: int, symmetric: bool, weighted: bool, knn: DictConfig | dict
) -> sp.csr_matrix:
    return knn_graph(
        items,
        k,
        include_self=False,
        symmetric=symmetric,
        weighted=weighted,
        normalization="none",  # normalised later, inside the enhanced graph
        method=knn["method"],
        device=knn["device"],
        chunk_size=int(knn["chunk_size"]),
    )


def pretrained_item_graph(cfg: DictConfig, dm) -> tuple[sp.csr_matrix | None, dict[str, Any]]:
    """``S^pt`` for EGRA (or None for ``graph_source=none``) and what was done, for metrics.json."""
    m = cfg.model
    source = str(m.graph_source)
    if source == "none" or int(m.k_pt) == 0:
        # k_pt=0 is refused by egra.pipeline.checks; a caller that skips the checks still gets
        # metrics.json saying what was used: no S^pt.
        return None, {"graph_source": "none"}
    from egra.pipeline.pretrain import pretrain

    t0 = time.perf_counter()
    emb = pretrain(cfg, dm, source)
    t_pre = time.perf_counter() - t0
    params = {
        "k": int(m.k_pt),
        "symmetric": bool(m.pt_symmetric),
        "weighted": bool(m.pt_weighted),
        "method": str(cfg.knn.method),
    }
    key = artifact_key(embedding=emb.path.name, **params)
    cache = ArtifactCache(cfg.paths.artifact_dir)

    def build():
        g = build_item_graph(
            emb.array("items"), params["k"], params["symmetric"], params["weighted"], cfg.knn
        )
        arrays = {"data": g.data.astype(np.float32), "indices": g.indices, "indptr": g.indptr}
        return arrays, {
            "embedding_artifact": str(emb.path),
            "n_items": g.shape[0],
            "nnz": int(g.nnz),
            **params,
        }

    t1 = time.perf_counter()
    art = cache.get_or_build("graphs", key, build, required=GRAPH_FILES)
    t_graph = time.perf_counter() - t1
    info = {
        "graph_source": source,
        "pretrain_artifact": str(emb.path),
        "pretrain_reused": emb.reused,
        "pretrain_s": round(t_pre, 3),
        "graph_artifact": str(art.path),
        "graph_reused": art.reused,
        "graph_s": round(t_graph, 3),
        "graph_nnz": int(len(art.array("indices"))),  # from the array, not the manifest's metadata
    }
    bb = emb.manifest.get("metrics") or {}
    for k in BACKBONE_KEYS:
        if k in bb:
            info[f"backbone/{k}"] = bb[k]
    log.info(
        "S^pt from %s: %d edges (%s %.1fs, graph %.1fs)",
        source,
        info["graph_nnz"],
        "reused" if emb.reused else "trained",
        t_pre,
        t_graph,
    )
    return _to_csr(art, dm.data.n_items), info
