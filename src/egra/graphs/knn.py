"""Top-K cosine neighbours and sparse kNN item–item graphs, built with FAISS.

Every item–item graph of the project goes through this module: MGCN's modality graphs
``S^m`` (MGCN's and FREEDOM's conventions) and EGRA's pretrained graph ``S^pt`` (Stage 2).
No dense ``N x N`` similarity matrix is ever formed: the rows are L2-normalised chunk by
chunk into a FAISS index and the index is queried in chunks, so the extra memory is the
index itself (``N·d`` floats for the exact and IVF indexes, plus the graph links for
HNSW), ``O(chunk_size·(d + k))`` working memory (``flat_sym`` also holds two
``chunk_size x chunk_size`` float32 blocks, 128 MiB at the default 4096) and the
``N x k`` result.

Two layers:

* :func:`topk_neighbors` — ``(idx [N,k] int64, sim [N,k] float32)``, each row sorted by
  decreasing cosine. ``method`` picks the index: ``"flat"`` (exact ``IndexFlatIP``),
  ``"flat_sym"`` (exact; on the CPU only the upper triangle of ``X Xᵀ`` is computed, in
  blocks, about half the time of ``"flat"`` for large ``d``), ``"ivf"`` (``IndexIVFFlat``,
  inner product) or ``"hnsw"`` (``IndexHNSWFlat``, inner product).
  ``device="auto"`` uses a GPU index when FAISS was built with GPU support, sees a GPU
  (``faiss.get_num_gpus() > 0``) and carries kernels for that GPU's compute capability
  (:func:`faiss_gpu_problem`, checked before any FAISS GPU code runs), else the CPU, with one
  logged line saying why. :func:`build_index` and
  :func:`search_index` are the two steps apart (for timing, or recall on a sample).
* :func:`knn_graph` — a ``scipy.sparse.csr_matrix`` (float32, ``N x N``) with the
  conventions as options: self included or not, weighted or binary, directed or
  symmetrised with ``max(S, Sᵀ)``, and one of four normalisations. The defaults are
  MGCN's modality graph; :data:`KNN_GRAPH_PRESETS` names MGCN's, FREEDOM's and EGRA's
  ``S^pt`` conventions, and :func:`knn_graph_preset` builds one by name.

Conventions worth knowing:

* Zero feature rows stay zero after normalisation (never NaN). Their cosine with every
  item is 0, so in :func:`topk_neighbors` their neighbours are an arbitrary tie; in
  :func:`knn_graph` every edge from or to an all-zero row is dropped, since its direction
  (and therefore any neighbour) is undefined.
* Approximate indexes may find fewer than ``k`` candidates for a row (IVF with a small
  ``nprobe``, HNSW with a small ``ef_search``); those slots hold ``idx = -1`` and
  ``sim = -inf`` at the end of the row, and :func:`knn_graph` skips them. The exact index
  always fills every slot.
* With weighted edges, negative cosine values are clamped to 0 (the edge is dropped).
  A row whose kept weights sum to a negative number would have no real ``1/sqrt(r_i)``,
  and MGCN's features (CNN and sentence embeddings, self-loops of weight 1) essentially
  never produce negative top-k cosines, so the clamp only matters for odd inputs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from egra.graphs.adjacency import sym_normalize
from egra.graphs.cuda_arch import KernelArchs, capability_str, library_archs, loaded_libraries

log = logging.getLogger(__name__)

METHODS = ("flat", "flat_sym", "ivf", "hnsw")
NORMALIZATIONS = ("rowsum_sym", "sym", "row", "none")

# Conventions (keyword arguments of knn_graph) under a name.
MGCN_MODALITY_GRAPH: Mapping[str, Any] = MappingProxyType(
    # Weighted cosine, top-k including the item itself (self + k-1 neighbours), directed,
    # w_ij / sqrt(r_i r_j) with r = row sums for both ends. EGRA's default for S^m.
    {"include_self": True, "symmetric": False, "weighted": True, "normalization": "rowsum_sym"}
)
FREEDOM_MODALITY_GRAPH: Mapping[str, Any] = MappingProxyType(
    # Binary, self included, directed; every row keeps k edges, so each weighs 1/k.
    {"include_self": True, "symmetric": False, "weighted": False, "normalization": "rowsum_sym"}
)
EGRA_PRETRAINED_GRAPH: Mapping[str, Any] = MappingProxyType(
    # EGRA's S^pt: k other items (self excluded), binary, symmetrised max(S, Sᵀ), left
    # unnormalised here: the model normalises it when it assembles A_e. By default
    # (pt_norm=separate) on its own, β·norm(S^pt) beside the normalised user-item block;
    # with pt_norm=joint as part of norm([[0, R], [Rᵀ, β·S^pt]]).
    {"include_self": False, "symmetric": True, "weighted": False, "normalization": "none"}
)
KNN_GRAPH_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"mgcn": MGCN_MODALITY_GRAPH, "freedom": FREEDOM_MODALITY_GRAPH, "egra_pt": EGRA_PRETRAINED_GRAPH}
)
#: Presets of a modality graph ``S^m`` (self included, directed), each modality on its own.
MODALITY_PRESETS = ("mgcn", "freedom")
#: Modality graphs built from all modalities together (``egra.graphs.consistency``, DA-MRS's).
JOINT_MODALITY_CONVENTIONS = ("damrs",)
#: What ``graph.knn_convention`` names.
MODALITY_CONVENTIONS = (*MODALITY_PRESETS, *JOINT_MODALITY_CONVENTIONS)


# ----------------------------------------------------------------------------------------
# Input handling


def _as_2d(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of item vectors, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"expected real numbers, got dtype {x.dtype}")
    return x


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _validate_finite(x: np.ndarray, chunk_size: int) -> None:
    """Raise ``ValueError`` naming the first row with a NaN or infinite entry."""
    if np.issubdtype(x.dtype, np.integer):
        return
    for start, end in _chunks(x.shape[0], chunk_size):
        ok = np.isfinite(x[start:end]).all(axis=1)
        if not ok.all():
            row = start + int(np.argmin(ok))
            raise ValueError(
                f"item vectors must be finite: row {row} contains NaN or inf "
                f"(first non-finite value: {x[row][~np.isfinite(x[row])][0]})"
            )


def _normalized_chunk(x: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:end`` as float32 unit vectors (a copy) and a mask of the all-zero rows.

    Rows are divided by their largest absolute entry first (in the input's precision),
    so finite but huge values overflow neither the squared norm nor the cast to float32;
    zero rows stay zero.
    """
    xs = x[start:end]
    if not np.issubdtype(xs.dtype, np.floating):
        xs = xs.astype(np.float64)
    scale = np.abs(xs).max(axis=1)
    zero = scale == 0
    scale[zero] = 1
    xc = np.ascontiguousarray(xs / scale[:, None], dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", xc, xc))
    norm[zero] = 1.0
    xc /= norm[:, None]
    return xc, zero


def _check_k(k: int, n: int, exclude_self: bool) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        what = "other items" if exclude_self else "items including the item itself"
        raise ValueError(
            f"k={k} neighbours requested but there are only {n} items: k must be < N (asked for {k} {what})"
        )


# ----------------------------------------------------------------------------------------
# Devices and indexes


def _device_capability(gpu: int) -> tuple[int, int] | None:
    """Compute capability of CUDA device ``gpu`` as torch numbers it (FAISS numbers devices
    the same way: both follow ``CUDA_VISIBLE_DEVICES``), or None when torch sees no such GPU."""
    import torch

    if not torch.cuda.is_available() or gpu >= torch.cuda.device_count():
        return None
    return tuple(torch.cuda.get_device_capability(gpu))


def faiss_kernel_archs() -> KernelArchs:
    """GPU architectures the loaded FAISS build has kernels for (its shared objects' fat
    binaries; those of the installed package when the process maps none by name)."""
    libs = loaded_libraries("faiss")
    if not libs:
        pkg = Path(faiss.__file__).resolve().parent
        libs = [
            *pkg.glob("*.so*"),
            *(f for d in pkg.parent.glob("faiss*.libs") for f in d.glob("*faiss*.so*")),
        ]
    return library_archs(libs)


def faiss_gpu_problem(gpu: int) -> str | None:
    """Why FAISS must not run on CUDA device ``gpu`` (None: it may), decided before any FAISS
    GPU code runs: a GPU its build has no kernels for would end the process at the first
    kernel (an ``abort()`` that no ``except`` sees)."""
    cap = _device_capability(gpu)
    if cap is None:
        return f"torch sees no CUDA device {gpu} to read its compute capability from"
    archs = faiss_kernel_archs()
    if not archs:
        return f"no GPU kernels found in the FAISS libraries, so compute capability {capability_str(cap)} is unconfirmed"
    if not archs.runs_on(cap):
        return (
            f"this FAISS build has kernels for {archs.describe()}, none of which runs on GPU {gpu} "
            f"(compute capability {capability_str(cap)})"
        )
    return None


@functools.cache
def _warn_once(message: str) -> None:
    # One line per reason and process, not one per graph built.
    log.warning(message)


def _faiss_has_gpus() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_device(device: str, method: str = "flat") -> str:
    """The device an index for ``method`` is built on for the ``device`` request: ``"cpu"`` or
    ``"cuda:N"`` (see :func:`topk_neighbors`); the reason for a CPU fallback is logged once."""
    gpu = _resolve_device(device, method)
    return "cpu" if gpu is None else f"cuda:{gpu}"


def _resolve_device(device: str, method: str) -> int | None:
    """GPU number to use, or ``None`` for the CPU."""
    device = str(device).lower()
    if device == "cpu":
        return None
    if device not in ("auto", "cuda", "gpu") and not device.startswith(("cuda:", "gpu:")):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    gpu_ok = _faiss_has_gpus()
    if device == "auto":
        gpu = 0 if gpu_ok and method != "hnsw" else None
    elif not gpu_ok:
        _warn_once(
            f"device={device!r} requested but FAISS has no usable GPU here (faiss-gpu not installed "
            "or faiss.get_num_gpus() == 0); building the kNN index on the CPU instead"
        )
        return None
    elif method == "hnsw":
        _warn_once("FAISS has no GPU HNSW index; building method='hnsw' on the CPU instead")
        return None
    else:
        gpu = int(device.split(":", 1)[1]) if ":" in device else 0
        if gpu >= faiss.get_num_gpus():
            raise ValueError(f"device={device!r} but FAISS sees only {faiss.get_num_gpus()} GPU(s)")
    if gpu is not None:
        problem = faiss_gpu_problem(gpu)
        if problem is not None:
            _warn_once(f"FAISS stays off the GPU: {problem}; building kNN indexes on the CPU")
            return None
    return gpu


def _default_nlist(n: int) -> int:
    # ~4·sqrt(N) lists, but at least 39 training points per list (FAISS's own minimum).
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


@dataclass(eq=False)
class KnnIndex:
    """A filled search structure over the L2-normalised rows of one item matrix.

    Made by :func:`build_index`, queried by :func:`search_index`. ``index`` is the FAISS
    index; for ``method="flat_sym"`` on the CPU it is ``None`` and ``vectors`` holds the
    normalised rows instead.
    """

    method: str
    device: str
    n: int
    d: int
    zero_rows: np.ndarray
    build_seconds: float
    index: Any = None
    vectors: np.ndarray | None = None
    resources: Any = field(default=None, repr=False)  # GPU resources live as long as the index


def build_index(
    x: np.ndarray,
    *,
    method: str = "flat",
    device: str = "auto",
    chunk_size: int = 4096,
    nlist: int | None = None,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 200,
    seed: int = 0,
) -> KnnIndex:
    """Validate ``x``, L2-normalise its rows chunk by chunk and fill an index with them.

    The arguments are those of :func:`topk_neighbors`. Use this with :func:`search_index`
    to time building and querying apart, or to query one index with several settings.
    """
    x = _as_2d(x)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _validate_finite(x, chunk_size)
    gpu = _resolve_device(device, method)
    if gpu is not None:
        try:
            return _build_index(
                x, method, gpu, chunk_size, nlist, nprobe, hnsw_m, ef_search, ef_construction, seed
            )
        except RuntimeError as err:
            log.warning("FAISS GPU index on cuda:%d failed (%s); building the index on the CPU", gpu, err)
    return _build_index(x, method, None, chunk_size, nlist, nprobe, hnsw_m, ef_search, ef_construction, seed)


def _build_index(
    x: np.ndarray,
    method: str,
    gpu: int | None,
    chunk_size: int,
    nlist: int | None,
    nprobe: int,
    hnsw_m: int,
    ef_search: int,
    ef_construction: int,
    seed: int,
) -> KnnIndex:
    n, d = x.shape
    t0 = time.perf_counter()
    res = faiss.StandardGpuResources() if gpu is not None else None
    index = None
    vectors = None

    if method in ("flat", "flat_sym"):
        if gpu is not None:
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = gpu
            index = faiss.GpuIndexFlatIP(res, d, cfg)
        elif method == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            vectors = np.empty((n, d), dtype=np.float32)
    elif method == "ivf":
        nl = _default_nlist(n) if nlist is None else int(nlist)
        if not 1 <= nl <= n:
            raise ValueError(f"nlist must be in [1, N={n}], got {nl}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nl, faiss.METRIC_INNER_PRODUCT)
        if gpu is not None:
            index = faiss.index_cpu_to_gpu(res, gpu, index)
        # Set on the index that trains: a GPU copy need not carry the CPU index's clustering
        # parameters, and its k-means would then use FAISS's default seed, not ours.
        index.cp.seed = int(seed)
        index.cp.spherical = True  # unit vectors in, unit centroids out
        # Train on a deterministic sample (FAISS would subsample to 256 points per list).
        n_train = min(n, 64 * nl)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
        xt = np.empty((n_train, d), dtype=np.float32)
        for start, end in _chunks(n_train, chunk_size):
            xt[start:end] = _normalized_chunk(x[sample[start:end]], 0, end - start)[0]
        index.train(xt)
        del xt
        index.nprobe = int(min(nprobe, nl))
    else:  # hnsw
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)

    zero = np.zeros(n, dtype=bool)
    for start, end in _chunks(n, chunk_size):
        xc, zero[start:end] = _normalized_chunk(x, start, end)
        if vectors is not None:
            vectors[start:end] = xc
        else:
            index.add(xc)
    return KnnIndex(
        method=method,
        device="cpu" if gpu is None else f"cuda:{gpu}",
        n=n,
        d=d,
        zero_rows=zero,
        build_seconds=time.perf_counter() - t0,
        index=index,
        vectors=vectors,
        resources=res,
    )


def search_index(
    index: KnnIndex,
    x: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    rows: np.ndarray | None = None,
    chunk_size: int = 4096,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of the rows of ``x`` (the matrix ``index`` was built from) in ``index``.

    ``rows`` restricts the queries to those row numbers (e.g. a sample for measuring
    recall); the result then has ``len(rows)`` rows. ``nprobe`` / ``ef_search`` override
    the IVF / HNSW search settings. Returns ``(idx, sim)`` as :func:`topk_neighbors`.
    """
    x = _as_2d(x)
    if x.shape != (index.n, index.d):
        raise ValueError(f"x has shape {x.shape} but the index was built from ({index.n}, {index.d})")
    _check_k(k, index.n, exclude_self)
    k_search = k + 1 if exclude_self else k
    if nprobe is not None and index.method == "ivf":
        index.index.nprobe = int(nprobe)
    if index.method == "hnsw":
        ef = index.index.hnsw.efSearch if ef_search is None else int(ef_search)
        index.index.hnsw.efSearch = max(ef, k_search)

    q_rows = np.arange(index.n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if q_rows.ndim != 1 or (q_rows.size and (q_rows.min() < 0 or q_rows.max() >= index.n)):
        raise ValueError(f"rows must be a 1-D array of row numbers in [0, {index.n})")
    nq = q_rows.size

    if index.vectors is not None and rows is None:
        # CPU flat_sym over all rows: each block of X Xᵀ above the diagonal serves both
        # its rows and (transposed) its columns.
        sim_s, idx_s = _sym_blocked_topk(index.vectors, k_search, chunk_size)
    else:
        sim_s = np.empty((nq, k_search), dtype=np.float32)
        idx_s = np.empty((nq, k_search), dtype=np.int64)
        for start, end in _chunks(nq, chunk_size):
            r = q_rows[start:end]
            if index.vectors is not None:
                d_c, i_c = _blocked_topk(index.vectors[r], index.vectors, k_search, chunk_size)
            else:
                xq = (
                    _normalized_chunk(x, start, end)[0]
                    if rows is None
                    else _normalized_chunk(x[r], 0, r.size)[0]
                )
                d_c, i_c = index.index.search(xq, k_search)
            sim_s[start:end] = d_c
            idx_s[start:end] = i_c
    if exclude_self:
        idx_s, sim_s = _drop_self(idx_s, sim_s, q_rows)
    missing = idx_s < 0
    if missing.any():
        sim_s[missing] = -np.inf
        log.info(
            "%d of %d neighbour slots not filled by the %s index",
            int(missing.sum()),
            idx_s.size,
            index.method,
        )
    np.clip(sim_s, -1.0, 1.0, out=sim_s, where=~missing)
    return idx_s, sim_s


def _heaps(d: np.ndarray, i: np.ndarray) -> Any:
    """FAISS min-heaps that keep the largest values, backed by ``d`` / ``i`` (``[n, k]``)."""
    h = faiss.float_minheap_array_t()
    h.nh, h.k = d.shape
    h.val = faiss.swig_ptr(d)
    h.ids = faiss.swig_ptr(i)
    h.heapify()
    return h


def _sym_blocked_topk(xn: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of every row of ``xn`` against all rows, computing
    only the blocks on and above the diagonal of ``xn xnᵀ`` (half the multiply-adds)."""
    n = xn.shape[0]
    d = np.empty((n, k), dtype=np.float32)
    i = np.empty((n, k), dtype=np.int64)
    h = _heaps(d, i)
    for i0, i1 in _chunks(n, block):
        xi = xn[i0:i1]
        for j0, j1 in _chunks(n, block):
            if j0 < i0:
                continue
            p = np.ascontiguousarray(xi @ xn[j0:j1].T)
            h.addn(j1 - j0, faiss.swig_ptr(p), j0, i0, i1 - i0)
            if j0 != i0:
                pt = np.ascontiguousarray(p.T)
                h.addn(i1 - i0, faiss.swig_ptr(pt), i0, j0, j1 - j0)
    h.reorder()
    return d, i


def _blocked_topk(xq: np.ndarray, xb: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of the rows of ``xq`` against ``xb`` (row blocks)."""
    d = np.empty((xq.shape[0], k), dtype=np.float32)
    i = np.empty((xq.shape[0], k), dtype=np.int64)
    h = _heaps(d, i)
    for j0, j1 in _chunks(xb.shape[0], block):
        p = np.ascontiguousarray(xq @ xb[j0:j1].T)
        h.addn(j1 - j0, faiss.swig_ptr(p), j0, 0, xq.shape[0])
    h.reorder()
    return d, i


def _drop_self(idx: np.ndarray, sim: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From ``k+1`` results per row keep ``k``: drop the query's own id where it appears,
    otherwise the last (lowest) result, so ties with duplicate vectors can neither keep
    the item itself nor leave ``k+1`` entries."""
    m, k1 = idx.shape
    drop = idx == own[:, None]
    drop[~drop.any(axis=1), k1 - 1] = True
    keep = ~drop
    return idx[keep].reshape(m, k1 - 1), sim[keep].reshape(m, k1 - 1)


# ----------------------------------------------------------------------------------------
# Public API


def topk_neighbors(
    x: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    method: str = "flat",
    device: str = "auto",
    chunk_size: int = 4096,
    nlist: int | None = None,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 200,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar items of every row of ``x`` (``N x d``).

    Returns ``(idx, sim)``, ``[N, k]`` int64 and float32, each row sorted by decreasing
    cosine. Rows are L2-normalised first (zero rows stay zero) and searched by inner
    product; ``x`` itself is not modified.

    Args:
        exclude_self: search ``k+1`` and drop the item itself (its own id where it is
            among the results, e.g. with duplicate vectors; otherwise the last result).
            Without it the item itself is normally the first result (cosine 1).
        method: ``"flat"`` exact FAISS ``IndexFlatIP``; ``"flat_sym"`` exact too, on the
            CPU computed block by block over the upper triangle of ``X Xᵀ`` with numpy's
            BLAS (about half the work of ``"flat"``; the best exact choice for large
            ``d`` on a CPU; on a GPU it is the GPU flat index); ``"ivf"``
            ``IndexIVFFlat`` trained on a sample (``nlist`` lists, default ``~4·sqrt(N)``;
            ``nprobe`` lists searched); ``"hnsw"`` ``IndexHNSWFlat`` (``hnsw_m`` links,
            ``ef_construction``, ``ef_search``; CPU only in FAISS).
        device: ``"auto"`` (GPU if FAISS has one it has kernels for, else CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"``. A GPU request without a usable GPU logs one warning
            and uses the CPU.
        chunk_size: rows normalised / added / queried at a time (``flat_sym`` also keeps
            two ``chunk_size²`` float32 blocks).
        seed: IVF training sample and k-means seed.

    Raises:
        ValueError: ``x`` not 2-D, a row with NaN/inf (the message names the first), or
            ``k`` not in ``[1, N-1]``.
    """
    idx, sim, _ = _search(
        x,
        k,
        exclude_self=exclude_self,
        method=method,
        device=device,
        chunk_size=chunk_size,
        nlist=nlist,
        nprobe=nprobe,
        hnsw_m=hnsw_m,
        ef_search=ef_search,
        ef_construction=ef_construction,
        seed=seed,
    )
    return idx, sim


def _search(x: Any, k: int, *, exclude_self: bool, chunk_size: int, **build_kwargs: Any):
    x = _as_2d(x)
    _check_k(k, x.shape[0], exclude_self)
    index = build_index(x, chunk_size=chunk_size, **build_kwargs)
    t0 = time.perf_counter()
    try:
        idx, sim = search_index(index, x, k, exclude_self=exclude_self, chunk_size=chunk_size)
    except RuntimeError as err:
        if index.device == "cpu":
            raise
        # A GPU index can fail where the CPU one cannot (out of GPU memory, a driver
        # mismatch): the graph is the same either way, so build it on the CPU.
        log.warning("FAISS GPU index on %s failed (%s); building the graph on the CPU", index.device, err)
        index = build_index(x, chunk_size=chunk_size, **{**build_kwargs, "device": "cpu"})
        idx, sim = search_index(index, x, k, exclude_self=exclude_self, chunk_size=chunk_size)
    log.debug(
        "top-%d %s (%s): N=%d d=%d, build %.2fs, search %.2fs",
        k,
        index.method,
        index.device,
        index.n,
        index.d,
        index.build_seconds,
        time.perf_counter() - t0,
    )
    return idx, sim, index.zero_rows


def knn_graph(
    x: np.ndarray,
    k: int,
    *,
    include_self: bool = True,
    symmetric: bool = False,
    weighted: bool = True,
    normalization: str = "rowsum_sym",
    method: str = "flat",
    device: str = "auto",
    **search_kwargs: Any,
) -> sp.csr_matrix:
    """Sparse kNN item–item graph (float32 CSR, ``N x N``) of the rows of ``x``.

    Row ``i`` holds item ``i``'s top-``k`` cosine neighbours; the defaults are MGCN's
    modality graph (:data:`MGCN_MODALITY_GRAPH`).

    Args:
        include_self: keep the item itself among its ``k`` (MGCN: self + ``k-1``
            neighbours, as a plain top-``k`` of the cosine row) or take ``k`` other items.
        symmetric: ``False`` = directed kNN graph (MGCN); ``True`` = ``max(S, Sᵀ)``.
        weighted: cosine values as edge weights (negatives clamped to 0, see the module
            docstring) or binary 1.0.
        normalization: applied last, after symmetrisation:
            ``"rowsum_sym"`` ``w_ij / sqrt(r_i r_j)`` with ``r`` the row sums at both ends
            (MGCN; zero-sum rows give 0); ``"sym"`` ``D_r^{-1/2} S D_c^{-1/2}`` with row
            sums ``D_r`` and column sums ``D_c`` (the usual ``D^{-1/2} S D^{-1/2}``; equal
            to ``"rowsum_sym"`` when ``S`` is symmetric); ``"row"`` ``D_r^{-1} S``;
            ``"none"``.
        method, device, **search_kwargs: passed to :func:`topk_neighbors`.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    idx, sim, zero = _search(
        x,
        k,
        exclude_self=not include_self,
        method=method,
        device=device,
        **_search_defaults(search_kwargs),
    )
    n = idx.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = idx.ravel()
    vals = np.maximum(sim.ravel(), 0.0) if weighted else np.ones(rows.size, dtype=np.float32)
    keep = cols >= 0
    if zero.any():
        keep &= ~zero[rows]
        keep &= ~zero[np.where(cols >= 0, cols, 0)]
    if weighted:
        keep &= vals > 0
    s = sp.csr_matrix(
        (vals[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32
    )
    if symmetric:
        s = s.maximum(s.T).tocsr()
    s = _normalize(s, normalization)
    s.eliminate_zeros()
    s.sort_indices()
    return s


def knn_graph_preset(x: np.ndarray, k: int, preset: str = "mgcn", **overrides: Any) -> sp.csr_matrix:
    """:func:`knn_graph` with a named convention from :data:`KNN_GRAPH_PRESETS`
    (``"mgcn"``, ``"freedom"``, ``"egra_pt"``); ``overrides`` replace single options."""
    if preset not in KNN_GRAPH_PRESETS:
        raise ValueError(f"unknown kNN graph preset {preset!r}; choose from {sorted(KNN_GRAPH_PRESETS)}")
    return knn_graph(x, k, **{**KNN_GRAPH_PRESETS[preset], **overrides})


def modality_graphs(
    features: Mapping[str, Any], k: int, modalities: Any = None, preset: str = "mgcn", **search: Any
) -> dict[str, sp.csr_matrix]:
    """The fixed modality graphs ``S^m`` of each float32 feature table, top-``k`` including
    the item itself: MGCN's (and EGRA's) :data:`MGCN_MODALITY_GRAPH` by default,
    ``preset="freedom"`` for FREEDOM's binary :data:`FREEDOM_MODALITY_GRAPH`.

    ``modalities`` defaults to the sorted keys of ``features``; ``search`` holds
    ``method``, ``device`` and the options of :func:`topk_neighbors`.
    """
    if preset not in MODALITY_PRESETS:
        raise ValueError(f"unknown modality graph preset {preset!r}; choose from {list(MODALITY_PRESETS)}")
    names = sorted(features) if modalities is None else list(modalities)
    return {
        m: knn_graph(np.asarray(features[m], dtype=np.float32), k, **KNN_GRAPH_PRESETS[preset], **search)
        for m in names
    }


def graph_digest(a: sp.spmatrix) -> str:
    """sha256 of a sparse graph's content (shape, CSR structure and float32 weights).

    Equal for equal graphs whatever their dtype or format on the way in, so a checkpoint
    can name the graphs it was trained on and a later load can check it gets the same.
    """
    c = sp.csr_matrix(a, dtype=np.float32, copy=True)  # canonicalised below, not the caller's
    c.sum_duplicates()
    c.sort_indices()
    h = hashlib.sha256(f"{c.shape[0]}x{c.shape[1]}".encode())
    for arr in (c.indptr.astype(np.int64), c.indices.astype(np.int64), c.data.astype(np.float32)):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def rank_device(device: str, local_rank: int) -> str:
    """The FAISS device of one process of a multi-process job.

    ``"auto"`` becomes the process's own GPU (``cuda:<local_rank mod visible GPUs>``) when
    FAISS has GPUs and kernels for that GPU (:func:`faiss_gpu_problem`), else ``"cpu"``;
    anything else is an explicit choice and stays as is. Without this every rank of a node
    would build on GPU 0.
    """
    if str(device).lower() != "auto":
        return str(device)
    n = faiss.get_num_gpus() if _faiss_has_gpus() else 0
    return resolve_device(f"cuda:{int(local_rank) % n}") if n > 0 else "cpu"


def graph_stats(a: sp.spmatrix) -> dict[str, Any]:
    """Small summary of a square sparse graph for logs (plain Python types)."""
    a = sp.csr_matrix(a)
    n = a.shape[0]
    a.eliminate_zeros()
    deg = np.diff(a.indptr)
    data = a.data
    diff = (a - a.T).tocsr()
    diff.eliminate_zeros()
    scale = max(1.0, float(np.abs(data).max(initial=0.0)))
    sym = diff.nnz == 0 or float(np.abs(diff.data).max()) <= 1e-6 * scale
    return {
        "n": int(n),
        "nnz": int(a.nnz),
        "avg_degree": float(a.nnz / n) if n else 0.0,
        "min_degree": int(deg.min()) if n else 0,
        "max_degree": int(deg.max()) if n else 0,
        "isolated": int((deg == 0).sum()),
        "symmetric": bool(sym),
        "self_loops": int(np.count_nonzero(a.diagonal())),
        "weight_min": float(data.min()) if data.size else 0.0,
        "weight_max": float(data.max()) if data.size else 0.0,
    }


# ----------------------------------------------------------------------------------------
# Helpers


_SEARCH_DEFAULTS = {
    "chunk_size": 4096,
    "nlist": None,
    "nprobe": 32,
    "hnsw_m": 32,
    "ef_search": 128,
    "ef_construction": 200,
    "seed": 0,
}


def _search_defaults(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(kwargs) - set(_SEARCH_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown search option(s) {sorted(unknown)}; valid: {sorted(_SEARCH_DEFAULTS)}")
    return {**_SEARCH_DEFAULTS, **kwargs}


def _inv_sqrt(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(v > 0, 1.0 / np.sqrt(v), 0.0).astype(np.float32)


def _normalize(s: sp.csr_matrix, normalization: str) -> sp.csr_matrix:
    if normalization == "none":
        return sp.csr_matrix(s, dtype=np.float32)
    if normalization == "rowsum_sym":
        return sym_normalize(s)
    r = np.asarray(s.sum(axis=1), dtype=np.float64).ravel()
    if normalization == "row":
        with np.errstate(divide="ignore"):
            inv = np.where(r > 0, 1.0 / r, 0.0).astype(np.float32)
        return sp.csr_matrix(sp.diags(inv) @ s, dtype=np.float32)
    # "sym": row sums on the left, column sums on the right.
    c = np.asarray(s.sum(axis=0), dtype=np.float64).ravel()
    return sp.csr_matrix(sp.diags(_inv_sqrt(r)) @ s @ sp.diags(_inv_sqrt(c)), dtype=np.float32)
