"""Stage: graph — every item-item graph a model trains on, built here and cached.

* ``S^m``, one per modality: top-``knn_k`` cosine graph of the raw features, in MGCN's
  convention (cosine-weighted; MGCN and EGRA), FREEDOM's (binary edges, each ``1/k``) or
  DA-MRS's (binary, edges only between items every modality finds similar, built from all
  modalities together), as ``graph.knn_convention`` says (``egra.graphs.modality_graphs``,
  ``egra.graphs.consistent_knn_graphs``);
* ``S^b``: the item-item co-interaction graph of the train split (DA-MRS): each item's
  top-``cooc_k`` items by number of common users, at least ``cooc_min_count``, with those
  counts as weights (``egra.graphs.cooccurrence_graph``);
* ``S^pt``: top-``k_pt`` graph of a pretrained backbone's item vectors, self excluded,
  binary or cosine-weighted, symmetrised or directed (docs/method.md), for EGRA's
  enhanced behavior graph. With ``graph_source=self`` no backbone is pretrained: ``S^pt``
  is rebuilt during training from EGRA's own item vectors every ``graph_refresh_every``
  epochs (:func:`refresh_callback`, the same builder as here), starting from the raw
  features' graph (``graph_init=raw_features``, built here) or from none (``warmup``).

Everything this stage reads is the ``graph`` config group: which graphs the model trains on
(its file in ``conf/graph/model/``: ``graph.knn_k`` and ``graph.knn_convention`` for ``S^m``;
``graph.graph_source``, ``graph.k_pt``, ``graph.pt_symmetric``, ``graph.pt_weighted``,
``graph.graph_refresh_every``, ``graph.graph_init`` for ``S^pt``; ``graph.cooc_k``,
``graph.cooc_min_count`` for ``S^b``; a trained backbone's
are ``backbones.<name>.graph``) and how the neighbours are searched (FAISS method, device,
chunking: :func:`search_options`). The model config holds constructor arguments only; the
one model key read here is ``model.modalities`` (which ``S^m`` to build).

Each graph is an artifact ``graphs/<key>/`` (CSR arrays + manifest) whose key hashes what
determines its content: the dataset fingerprint or the embedding artifact, the graph's
parameters and the search method (for an approximate index also whether a GPU builds it).
Models get the matrices; checkpoints get their names (:meth:`Graphs.names`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from omegaconf import DictConfig

from egra.data.interactions import TRAIN
from egra.graphs import (
    consistent_knn_graphs,
    cooccurrence_graph,
    graph_digest,
    knn_graph,
    modality_graphs,
    rank_device,
)
from egra.graphs.knn import JOINT_MODALITY_CONVENTIONS, resolve_device
from egra.pipeline import dist
from egra.pipeline.cache import Artifact, ArtifactCache, artifact_key
from egra.pipeline.schema import GRAPH_INITS, NO_GRAPH, SELF_SOURCE
from egra.training.callbacks import GraphRefresh

log = logging.getLogger(__name__)

#: The arrays of a graph artifact (CSR); an artifact whose manifest lacks one is rebuilt.
GRAPH_FILES = ("data", "indices", "indptr")
#: Search methods that return the exact top-k: one artifact whichever of them built it.
EXACT_METHODS = ("flat", "flat_sym")
# Backbone metrics carried into the EGRA run's metrics.json (for side-by-side tables).
BACKBONE_KEYS = (
    "epochs_run",  # with build_time_s: what the backbone cost (compute columns of make compare)
    "valid/Recall@20",
    *(f"test/{m}@{k}" for m in ("Recall", "NDCG") for k in (10, 20, 50)),
    "test/popgroup0/Recall@20",
)


@dataclass(frozen=True)
class GraphSpec:
    """The graphs one model config asks for."""

    knn_k: int | None = None  # S^m with this k, or none
    convention: str = "mgcn"  # S^m's edge weights and normalisation (egra.graphs.knn.MODALITY_PRESETS)
    source: str | None = None  # S^pt's backbone (graph_source), or None for models without S^pt
    k_pt: int = 0
    symmetric: bool = True
    weighted: bool = False
    modalities: tuple[str, ...] | None = None
    refresh_every: int = 5  # graph_source=self: epochs between rebuilds of S^pt
    init: str = GRAPH_INITS[0]  # graph_source=self: S^pt before the first rebuild (GRAPH_INITS)
    cooc_k: int | None = None  # S^b (co-interactions) with this k, or none
    cooc_min_count: int = 2  # S^b: fewest common users of an edge

    @classmethod
    def of(cls, graph_cfg: Any, model_cfg: Any = None) -> GraphSpec:
        """The graphs ``graph_cfg`` (a ``graph`` group, or a backbone's) asks for, for the
        modalities of ``model_cfg``."""
        g = graph_cfg if graph_cfg is not None else {}
        mods = (model_cfg or {}).get("modalities")
        return cls(
            knn_k=int(g["knn_k"]) if g.get("knn_k") is not None else None,
            convention=str(g.get("knn_convention") or "mgcn"),
            source=str(g["graph_source"]) if g.get("graph_source") is not None else None,
            k_pt=int(g.get("k_pt") or 0),
            symmetric=bool(g.get("pt_symmetric", True)),
            weighted=bool(g.get("pt_weighted", False)),
            modalities=tuple(mods) if mods else None,
            refresh_every=int(g.get("graph_refresh_every", 5)),
            init=str(g.get("graph_init", "raw_features")),
            cooc_k=int(g["cooc_k"]) if g.get("cooc_k") is not None else None,
            cooc_min_count=int(g.get("cooc_min_count", 2)),
        )

    @property
    def pretrained_source(self) -> str | None:
        """The backbone ``S^pt`` is built from, or None when no pretrained ``S^pt`` is wanted
        (none at all, or ``graph_source=self``)."""
        if self.source in (None, NO_GRAPH, SELF_SOURCE) or self.k_pt == 0:
            return None
        return self.source

    @property
    def self_graph(self) -> bool:
        """``S^pt`` is rebuilt during training from the model's own item vectors."""
        return self.source == SELF_SOURCE and self.k_pt > 0


@dataclass
class Graphs:
    """The graph stage's output for one model: matrices, artifact keys and stage info."""

    spec: GraphSpec = field(default_factory=GraphSpec)
    modality: dict[str, sp.csr_matrix] = field(default_factory=dict)
    pretrained: sp.csr_matrix | None = None
    behavior: sp.csr_matrix | None = None  # S^b
    artifacts: dict[str, str] = field(default_factory=dict)  # graph name -> artifact key
    info: dict[str, Any] = field(default_factory=dict)

    def model_inputs(self) -> dict[str, Any]:
        """Constructor arguments: ``modality_graphs`` (S^m), ``item_graph`` (S^pt) and/or
        ``behavior_graph`` (S^b)."""
        out: dict[str, Any] = {}
        if self.spec.knn_k is not None:
            out["modality_graphs"] = self.modality
        if self.spec.source is not None:
            out["item_graph"] = self.pretrained
        if self.spec.cooc_k is not None:
            out["behavior_graph"] = self.behavior
        return out

    def matrices(self) -> dict[str, sp.csr_matrix]:
        named = {f"S^m/{m}": g for m, g in self.modality.items()}
        if self.pretrained is not None:
            named["S^pt"] = self.pretrained
        if self.behavior is not None:
            named["S^b"] = self.behavior
        return named

    def names(self) -> dict[str, dict[str, str]]:
        """What a checkpoint records: each graph's artifact key and content sha256."""
        return {
            name: {"artifact": self.artifacts.get(name, ""), "sha256": graph_digest(g)}
            for name, g in self.matrices().items()
        }


def search_options(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of ``egra.graphs.knn_graph`` from the ``graph`` config group.

    ``device: auto`` is this process's own GPU (its local rank), never GPU 0 for all ranks.
    """
    g = cfg.graph
    return {
        "method": str(g.method),
        "device": rank_device(str(g.device), dist.local_rank()),
        "chunk_size": int(g.chunk_size),
        "nlist": None if g.get("nlist") is None else int(g.nlist),
        "nprobe": int(g.nprobe),
        "hnsw_m": int(g.hnsw_m),
        "ef_search": int(g.ef_search),
        "ef_construction": int(g.ef_construction),
        "seed": int(g.seed),
    }


def _search_key(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The search options that change a graph: chunking never does; the device only for an
    approximate index (a GPU trains its k-means and scans its lists with other rounding than
    the CPU, so a GPU-built IVF graph is its own artifact; which GPU does not matter)."""
    if opts["method"] in EXACT_METHODS:
        return {"search": "exact"}
    drop = ("device", "chunk_size")
    search = {k: v for k, v in opts.items() if k not in drop}
    if resolve_device(opts["device"], opts["method"]) != "cpu":
        search["device"] = "gpu"  # CPU keys stay as they were before the device counted
    return {"search": search}


def _csr_arrays(g: sp.csr_matrix) -> dict[str, np.ndarray]:
    g = sp.csr_matrix(g, dtype=np.float32)
    return {"data": g.data, "indices": g.indices.astype(np.int64), "indptr": g.indptr.astype(np.int64)}


def _to_csr(art: Artifact) -> sp.csr_matrix:
    a = art.arrays()
    n = tuple(art.manifest["graph_shape"])
    return sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=n)


def _cached_graph(cache: ArtifactCache, key: str, build, meta: dict[str, Any]) -> Artifact:
    def build_arrays():
        g = build()
        return _csr_arrays(g), {**meta, "graph_shape": list(g.shape), "nnz": int(g.nnz)}

    return cache.get_or_build("graphs", key, build_arrays, required=GRAPH_FILES)


def modality_graph_set(
    cfg: DictConfig, dm, spec: GraphSpec, known: Graphs | None = None
) -> tuple[dict[str, sp.csr_matrix], dict[str, str]]:
    """``S^m`` for every modality the model uses, and their artifact keys. A graph ``known``
    already holds under the same key (the backbone's, built by this run) is taken from it."""
    feats = dm.data.features
    names = list(spec.modalities) if spec.modalities else sorted(feats)
    opts = search_options(cfg)
    cache = ArtifactCache(cfg.paths.artifact_dir)
    fingerprint = dm.data.fingerprint()
    missing = [m for m in names if m not in feats]
    if missing:
        raise ValueError(f"modality {missing[0]!r} is not in the data's features {sorted(feats)}")
    joint = spec.convention in JOINT_MODALITY_CONVENTIONS
    built: dict[str, sp.csr_matrix] = {}

    def build(m: str) -> sp.csr_matrix:
        if not joint:
            return modality_graphs({m: feats[m]}, spec.knn_k, preset=spec.convention, **opts)[m]
        # Every modality's graph needs all of them: one pass builds them all, once.
        if not built:
            built.update(
                consistent_knn_graphs(
                    feats, spec.knn_k, names, chunk_size=opts["chunk_size"], device=opts["device"]
                )
            )
        return built[m]

    graphs, keys = {}, {}
    for m in names:
        params: dict[str, Any] = {
            "graph": "S^m",
            "modality": m,
            "k": spec.knn_k,
            "convention": spec.convention,
        }
        if joint:
            # Exact whatever graph.method says; the graph depends on the other modalities too.
            params["with"] = names
            search = {"search": "exact"}
        else:
            search = _search_key(opts)
        key = artifact_key(dataset=fingerprint, **params, **search)
        if known is not None and known.artifacts.get(f"S^m/{m}") == key:
            graphs[m], keys[f"S^m/{m}"] = known.modality[m], key
            continue
        art = _cached_graph(cache, key, lambda m=m: build(m), {**params, "dataset_fingerprint": fingerprint})
        graphs[m], keys[f"S^m/{m}"] = _to_csr(art), key
    return graphs, keys


def behavior_graph(cfg: DictConfig, dm, spec: GraphSpec) -> tuple[sp.csr_matrix, str]:
    """``S^b``, the top-``cooc_k`` co-interaction graph of the train split, and its artifact key."""
    fingerprint = dm.data.fingerprint()
    params = {"graph": "S^b", "k": spec.cooc_k, "min_count": spec.cooc_min_count}
    key = artifact_key(dataset=fingerprint, **params)
    users, items = dm.data.pairs(TRAIN)
    art = _cached_graph(
        ArtifactCache(cfg.paths.artifact_dir),
        key,
        lambda: cooccurrence_graph(users, items, dm.data.n_items, spec.cooc_k, spec.cooc_min_count),
        {**params, "dataset_fingerprint": fingerprint},
    )
    return _to_csr(art), key


def pt_graph_builder(cfg: DictConfig, spec: GraphSpec) -> Callable[[np.ndarray], sp.csr_matrix]:
    """``vectors -> S^pt``: the top-``k_pt`` graph of item vectors with ``spec``'s conventions
    (self excluded, binary or weighted, symmetrised or directed) and the ``graph`` group's
    search, unnormalised (it is normalised as part of the enhanced adjacency). Every ``S^pt``
    is built by it: from a backbone's vectors, the raw features, or EGRA's own."""
    return functools.partial(
        knn_graph,
        k=spec.k_pt,
        include_self=False,
        symmetric=spec.symmetric,
        weighted=spec.weighted,
        normalization="none",
        **search_options(cfg),
    )


def pretrained_graph(cfg: DictConfig, spec: GraphSpec, emb: Artifact) -> tuple[sp.csr_matrix, Artifact]:
    """``S^pt`` from the item vectors of the embedding artifact ``emb`` (unnormalised: it is
    normalised as part of the enhanced adjacency)."""
    opts = search_options(cfg)
    params = {"k": spec.k_pt, "symmetric": spec.symmetric, "weighted": spec.weighted}
    # The embedding's key from its directory name, not from its manifest's metadata.
    key = artifact_key(embedding=emb.path.name, **params, **_search_key(opts))
    build = pt_graph_builder(cfg, spec)
    meta = {"graph": "S^pt", "embedding_artifact": str(emb.path), **params, "method": opts["method"]}
    art = _cached_graph(ArtifactCache(cfg.paths.artifact_dir), key, lambda: build(emb.array("items")), meta)
    return _to_csr(art), art


def raw_feature_vectors(dm) -> np.ndarray:
    """The concatenated L2-normalised modality features (the ``raw_features`` item vectors)."""
    feats = dm.data.features
    if not feats:
        raise ValueError(f"backbone raw_features needs item features, but {dm.data.source} has none")
    blocks = []
    for name in sorted(feats):
        f = feats[name].astype(np.float32)
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        blocks.append(np.divide(f, norm, out=np.zeros_like(f), where=norm > 0))
    return np.concatenate(blocks, axis=1)


def initial_self_graph(cfg: DictConfig, dm, spec: GraphSpec) -> tuple[sp.csr_matrix, Artifact]:
    """``graph_source=self``, ``graph_init=raw_features``: ``S^pt`` of the raw features until the
    first refresh. A graph artifact keyed by the dataset; no embedding artifact is written."""
    opts = search_options(cfg)
    fingerprint = dm.data.fingerprint()
    params = {"graph": "S^pt", "vectors": "raw_features", "k": spec.k_pt}
    params.update({"symmetric": spec.symmetric, "weighted": spec.weighted})
    key = artifact_key(dataset=fingerprint, **params, **_search_key(opts))
    build = pt_graph_builder(cfg, spec)
    meta = {**params, "dataset_fingerprint": fingerprint, "method": opts["method"]}
    art = _cached_graph(
        ArtifactCache(cfg.paths.artifact_dir), key, lambda: build(raw_feature_vectors(dm)), meta
    )
    return _to_csr(art), art


def refresh_callback(cfg: DictConfig, spec: GraphSpec) -> GraphRefresh | None:
    """For ``graph_source=self``: the callback that rebuilds ``S^pt`` from the model's item
    vectors every ``graph_refresh_every`` epochs with :func:`pt_graph_builder`; else None."""
    if not spec.self_graph:
        return None
    return GraphRefresh(every=spec.refresh_every, build=pt_graph_builder(cfg, spec))


def build_graphs(
    cfg: DictConfig,
    dm,
    spec: GraphSpec,
    backbone: Artifact | None = None,
    *,
    pretrained: bool = True,
    known: Graphs | None = None,
) -> Graphs:
    """Every graph ``spec`` asks for: ``S^m`` from the features (or from ``known``, graphs this
    run already built, e.g. the model's when its backbone trains on the same ``S^m``), ``S^pt``
    from ``backbone`` (``graph_source=self``: the raw features' first ``S^pt``, or none with
    ``graph_init=warmup``).

    ``pretrained=False`` builds only the graphs of the data, leaving the backbone's ``S^pt`` to
    :func:`add_pretrained` once the backbone exists: the train pipeline builds those before
    the backbone's fit, so under DDP no rank waits at a barrier while another runs FAISS.
    """
    out = Graphs(spec=spec)
    if spec.knn_k is not None:
        out.modality, keys = modality_graph_set(cfg, dm, spec, known)
        out.artifacts.update(keys)
    if spec.cooc_k is not None:
        out.behavior, out.artifacts["S^b"] = behavior_graph(cfg, dm, spec)
    if spec.source is not None:
        # k_pt=0 is refused by egra.pipeline.checks; a caller that skips the checks still gets
        # metrics.json saying what was used: no S^pt.
        used = spec.pretrained_source is not None or spec.self_graph
        out.info["graph_source"] = spec.source if used else "none"
    if spec.self_graph:
        out.info.update({"graph_init": spec.init, "graph_refresh_every": spec.refresh_every})
        if spec.init == "raw_features":
            t0 = time.perf_counter()
            out.pretrained, art = initial_self_graph(cfg, dm, spec)
            out.artifacts["S^pt"] = art.path.name
            out.info.update(
                {
                    "graph_artifact": str(art.path),
                    "graph_reused": art.reused,
                    "graph_s": round(time.perf_counter() - t0, 3),
                    "graph_nnz": int(len(art.array("indices"))),
                }
            )
    if pretrained:
        add_pretrained(out, cfg, backbone)
    return out


def add_pretrained(out: Graphs, cfg: DictConfig, backbone: Artifact | None) -> Graphs:
    """Add ``S^pt`` from the backbone's embedding artifact to ``out`` (when its spec wants one)."""
    spec = out.spec
    if spec.pretrained_source is None:
        return out
    if backbone is None:
        raise ValueError(f"S^pt from {spec.pretrained_source!r} needs its pretrained embedding artifact")
    t0 = time.perf_counter()
    out.pretrained, art = pretrained_graph(cfg, spec, backbone)
    out.artifacts["S^pt"] = art.path.name
    out.info.update(
        {
            "graph_artifact": str(art.path),
            "graph_reused": art.reused,
            "graph_s": round(time.perf_counter() - t0, 3),
            # from the array, not the manifest's metadata
            "graph_nnz": int(len(art.array("indices"))),
        }
    )
    bb = backbone.manifest.get("metrics") or {}
    out.info.update({f"backbone/{k}": bb[k] for k in BACKBONE_KEYS if k in bb})
    if "build_time_s" in backbone.manifest:
        out.info["backbone/build_time_s"] = backbone.manifest["build_time_s"]
    log.debug("S^pt from %s: %d edges (%.1fs)", spec.source, out.info["graph_nnz"], out.info["graph_s"])
    return out


def load_named(artifact_dir: str, names: Mapping[str, Mapping[str, str]]) -> dict[str, sp.csr_matrix]:
    """The graphs a checkpoint names (``checkpoint["egra_graphs"]``), read from the cache by
    artifact key and checked against their sha256; a missing or different one is an error."""
    cache = ArtifactCache(artifact_dir)
    out = {}
    for name, ref in names.items():
        art = cache.get("graphs", ref["artifact"])
        if art is None:
            raise FileNotFoundError(
                f"graph {name} (artifact {ref['artifact']}) that the checkpoint was trained on is not in "
                f"{cache.path('graphs', ref['artifact'])}: rebuild it with the run's config or copy it there"
            )
        g = _to_csr(art)
        if graph_digest(g) != ref["sha256"]:
            raise ValueError(f"graph {name} in {art.path} differs from the one the checkpoint was trained on")
        out[name] = g
    return out
