"""kNN search and kNN graph conventions (egra.graphs.knn)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.sparse as sp

from egra.graphs.knn import (
    EGRA_PRETRAINED_GRAPH,
    KNN_GRAPH_PRESETS,
    MGCN_MODALITY_GRAPH,
    KnnIndex,
    build_index,
    graph_stats,
    knn_graph,
    knn_graph_preset,
    search_index,
    topk_neighbors,
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _brute_topk(x: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    xn = _unit(x)
    s = xn @ xn.T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, axis=1)


def _clustered(n: int, d: int, n_clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32)
    labels = rng.integers(0, n_clusters, size=n)
    return centers[labels] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)


def _angles(*deg: float) -> np.ndarray:
    r = np.deg2rad(np.asarray(deg))
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------
# topk_neighbors


@pytest.mark.parametrize("method", ["flat", "flat_sym"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_exact_matches_bruteforce(method, exclude_self):
    x = np.random.default_rng(0).standard_normal((400, 24)).astype(np.float32)
    idx, sim = topk_neighbors(x, 10, exclude_self=exclude_self, method=method, device="cpu", chunk_size=64)
    ref_idx, ref_sim = _brute_topk(x, 10, exclude_self)
    assert idx.shape == (400, 10) and idx.dtype == np.int64
    assert sim.shape == (400, 10) and sim.dtype == np.float32
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    # Random data has no ties up to float32 precision, except where the sims are within rounding.
    close = np.abs(np.diff(ref_sim, axis=1)) < 1e-5
    for i in range(400):
        if close[i].any():
            assert set(idx[i]) == set(ref_idx[i])
        else:
            np.testing.assert_array_equal(idx[i], ref_idx[i])
    assert np.all(np.diff(sim, axis=1) <= 1e-7)  # decreasing
    if exclude_self:
        assert not (idx == np.arange(400)[:, None]).any()
    else:
        np.testing.assert_array_equal(idx[:, 0], np.arange(400))
        np.testing.assert_allclose(sim[:, 0], 1.0, atol=1e-6)


def test_chunking_does_not_change_result():
    x = np.random.default_rng(1).standard_normal((203, 9))
    a = topk_neighbors(x, 5, exclude_self=True, device="cpu", chunk_size=7)
    b = topk_neighbors(x, 5, exclude_self=True, device="cpu", chunk_size=4096)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_build_then_search_rows_subset():
    x = _clustered(500, 16, n_clusters=10)
    full, full_sim = topk_neighbors(x, 6, exclude_self=True)
    rows = np.array([3, 499, 0, 250, 251])
    for method in ("flat", "flat_sym"):
        index = build_index(x, method=method, chunk_size=128)
        assert isinstance(index, KnnIndex) and index.n == 500 and index.device == "cpu"
        idx, sim = search_index(index, x, 6, exclude_self=True, rows=rows, chunk_size=2)
        np.testing.assert_array_equal(idx, full[rows])
        np.testing.assert_allclose(sim, full_sim[rows], atol=1e-6)
    index = build_index(x, method="ivf", nlist=8)
    a, _ = search_index(index, x, 6, rows=rows, nprobe=8)  # all lists probed: exact
    np.testing.assert_array_equal(a[:, 0], rows)
    with pytest.raises(ValueError, match="built from"):
        search_index(index, x[:10], 3)
    with pytest.raises(ValueError, match="rows"):
        search_index(index, x, 3, rows=np.array([500]))


def test_input_not_modified_and_float64_int_accepted():
    x = np.random.default_rng(2).standard_normal((50, 6))
    x0 = x.copy()
    topk_neighbors(x, 3)
    np.testing.assert_array_equal(x, x0)
    idx, _ = topk_neighbors(np.arange(60).reshape(20, 3) % 7, 2)
    assert idx.shape == (20, 2)


@pytest.mark.parametrize("method", ["flat", "flat_sym"])
def test_exclude_self_with_duplicates(method):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((30, 8)).astype(np.float32)
    x = np.concatenate([np.repeat(base[:1], 6, axis=0), base[1:]])  # rows 0..5 identical
    for k in (1, 2, 5, 8):
        idx, sim = topk_neighbors(x, k, exclude_self=True, method=method, chunk_size=16)
        assert idx.shape == (x.shape[0], k)
        assert not (idx == np.arange(x.shape[0])[:, None]).any()
        assert all(len(set(r)) == k for r in idx)
        # The duplicates see each other first, at cosine 1.
        for i in range(6):
            want = min(k, 5)
            assert set(idx[i, :want]) <= set(range(6)) - {i}
            np.testing.assert_allclose(sim[i, :want], 1.0, atol=1e-6)


def test_zero_rows_stay_finite():
    x = np.random.default_rng(4).standard_normal((20, 5))
    x[7] = 0.0
    idx, sim = topk_neighbors(x, 4)
    assert np.isfinite(sim).all()
    np.testing.assert_allclose(sim[7], 0.0)
    assert 7 not in idx[np.arange(20) != 7, :1]  # nobody has the zero row as best match


def test_huge_finite_values_do_not_overflow():
    x = np.array([[1e30, 1e30], [1e30, -1e30], [1.0, 1.0]], dtype=np.float32)
    idx, sim = topk_neighbors(x, 1, exclude_self=True)
    assert np.isfinite(sim).all()
    assert idx[0, 0] == 2 and idx[2, 0] == 0
    idx64, sim64 = topk_neighbors(x.astype(np.float64) * 1e270, 1, exclude_self=True)  # > float32 max
    np.testing.assert_array_equal(idx64, idx)
    np.testing.assert_allclose(sim64, sim, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_names_the_row(bad):
    x = np.ones((10, 3))
    x[6, 1] = bad
    x[8, 0] = np.nan
    with pytest.raises(ValueError, match=r"row 6\b"):
        topk_neighbors(x, 2, chunk_size=4)


@pytest.mark.parametrize(
    ("shape", "k", "exclude_self", "match"),
    [
        ((5, 3), 5, False, "k must be < N"),
        ((5, 3), 7, True, "k must be < N"),
        ((5, 3), 0, False, "k must be >= 1"),
        ((5,), 1, False, "2-D"),
        ((0, 3), 1, False, "non-empty"),
    ],
)
def test_bad_shapes_and_k(shape, k, exclude_self, match):
    with pytest.raises(ValueError, match=match):
        topk_neighbors(np.ones(shape), k, exclude_self=exclude_self)


def test_k_equal_n_minus_one_is_everyone():
    x = np.random.default_rng(5).standard_normal((6, 4))
    idx, _ = topk_neighbors(x, 5, exclude_self=True)
    for i in range(6):
        assert set(idx[i]) == set(range(6)) - {i}


def test_bad_method_and_device():
    x = np.ones((5, 2))
    with pytest.raises(ValueError, match="method"):
        topk_neighbors(x, 1, method="lsh")
    with pytest.raises(ValueError, match="device"):
        topk_neighbors(x, 1, device="tpu")


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("ivf", {"nprobe": 16}), ("hnsw", {"hnsw_m": 16, "ef_search": 64, "ef_construction": 80})],
)
def test_approximate_recall(method, kwargs):
    x = _clustered(4000, 32, n_clusters=40)
    exact, _ = topk_neighbors(x, 10, exclude_self=True, method="flat")
    approx, sim = topk_neighbors(x, 10, exclude_self=True, method=method, **kwargs)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
    assert recall >= 0.9, recall
    assert not (approx == np.arange(4000)[:, None]).any()
    filled = approx >= 0
    assert np.all(np.diff(np.where(filled, sim, -2.0), axis=1) <= 1e-6)


def test_ivf_nlist_validation_and_determinism():
    x = _clustered(600, 8, n_clusters=5)
    with pytest.raises(ValueError, match="nlist"):
        topk_neighbors(x, 3, method="ivf", nlist=601)
    a = topk_neighbors(x, 3, method="ivf", nlist=10, nprobe=2, seed=7)
    b = topk_neighbors(x, 3, method="ivf", nlist=10, nprobe=2, seed=7)
    np.testing.assert_array_equal(a[0], b[0])


def test_cuda_request_falls_back_to_cpu_with_one_warning(caplog):
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible to FAISS here")
    x = np.random.default_rng(6).standard_normal((50, 8))
    with caplog.at_level(logging.WARNING, logger="egra.graphs.knn"):
        idx, sim = topk_neighbors(x, 3, device="cuda")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cuda" in warnings[0].getMessage() and "CPU" in warnings[0].getMessage()
    ref = topk_neighbors(x, 3, device="cpu")
    np.testing.assert_array_equal(idx, ref[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="egra.graphs.knn"):
        topk_neighbors(x, 3, device="auto")
    assert not caplog.records


# ----------------------------------------------------------------------------------------
# knn_graph: conventions on a hand-made example
#
# Four unit vectors in the plane at 0°, 40°, 60°, 150°. Each item's nearest *other* item:
# a(0°)→b(40°), b→c(60°), c→b, d(150°)→c. So the directed binary 1-NN graph is
#   a→b, b→c, c→b, d→c      and max(S, Sᵀ) has the undirected edges a–b, b–c, c–d.

A, B, C, D = range(4)
X4 = _angles(0, 40, 60, 150)
S_DIRECTED = np.array(
    [
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
    ],
    dtype=np.float32,
)
S_SYM = np.array(
    [
        [0, 1, 0, 0],
        [1, 0, 1, 0],
        [0, 1, 0, 1],
        [0, 0, 1, 0],
    ],
    dtype=np.float32,
)
H = 1 / math.sqrt(2)


def _g(**kw) -> np.ndarray:
    m = knn_graph(X4, 1, include_self=False, weighted=False, **kw)
    assert isinstance(m, sp.csr_matrix) and m.dtype == np.float32 and m.shape == (4, 4)
    return m.toarray()


def test_binary_directed_and_symmetrised():
    np.testing.assert_array_equal(_g(symmetric=False, normalization="none"), S_DIRECTED)
    np.testing.assert_array_equal(_g(symmetric=True, normalization="none"), S_SYM)


def test_normalizations_directed():
    # Row sums r = [1, 1, 1, 1], column sums c = [0, 2, 2, 0].
    np.testing.assert_allclose(_g(normalization="rowsum_sym"), S_DIRECTED, atol=1e-7)
    np.testing.assert_allclose(_g(normalization="row"), S_DIRECTED, atol=1e-7)
    expected_sym = np.array(
        [
            [0, H, 0, 0],
            [0, 0, H, 0],
            [0, H, 0, 0],
            [0, 0, H, 0],
        ]
    )
    np.testing.assert_allclose(_g(normalization="sym"), expected_sym, atol=1e-7)


def test_normalizations_symmetrised():
    # Degrees [1, 2, 2, 1].
    expected_sym = np.array(
        [
            [0, H, 0, 0],
            [H, 0, 0.5, 0],
            [0, 0.5, 0, H],
            [0, 0, H, 0],
        ]
    )
    expected_row = np.array(
        [
            [0, 1, 0, 0],
            [0.5, 0, 0.5, 0],
            [0, 0.5, 0, 0.5],
            [0, 0, 1, 0],
        ]
    )
    np.testing.assert_allclose(_g(symmetric=True, normalization="rowsum_sym"), expected_sym, atol=1e-7)
    np.testing.assert_allclose(_g(symmetric=True, normalization="sym"), expected_sym, atol=1e-7)
    np.testing.assert_allclose(_g(symmetric=True, normalization="row"), expected_row, atol=1e-7)


def test_include_self_weighted_mgcn_by_hand():
    # k=2 with self: a keeps {a: 1, b: cos40}, b {b: 1, c: cos20}, c {c: 1, b: cos20},
    # d {d: 1, c: cos90 = 0 → dropped}.
    c40, c20 = math.cos(math.radians(40)), math.cos(math.radians(20))
    w = np.array(
        [
            [1, c40, 0, 0],
            [0, 1, c20, 0],
            [0, c20, 1, 0],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(knn_graph(X4, 2, normalization="none").toarray(), w, atol=1e-6)
    r = w.sum(axis=1)
    np.testing.assert_allclose(knn_graph(X4, 2).toarray(), w / np.sqrt(np.outer(r, r)), atol=1e-6)
    s = knn_graph(X4, 2, symmetric=True, normalization="none").toarray()
    np.testing.assert_allclose(s, np.maximum(w, w.T), atol=1e-6)


def test_negative_weights_clamped_but_kept_in_binary():
    # d's 3 other items: c (cos 90° = 0), b (cos 110° < 0), a (cos 150° < 0).
    w = knn_graph(X4, 3, include_self=False, normalization="none").toarray()
    assert (w >= 0).all()
    np.testing.assert_array_equal(w[D], 0.0)  # all three weights <= 0 → dropped
    b = knn_graph(X4, 3, include_self=False, weighted=False, normalization="none").toarray()
    np.testing.assert_array_equal(b[D], [1, 1, 1, 0])


def test_mgcn_convention_matches_dense_reference():
    rng = np.random.default_rng(7)
    x = np.abs(rng.standard_normal((300, 40)))  # non-negative like CNN features
    k = 10
    # The protocol's way: dense cosine, top-k per row (self included), scatter the kept
    # cosine values, then w_ij / sqrt(r_i r_j) with row sums at both ends.
    xn = _unit(x)
    sim = xn @ xn.T
    top = np.argsort(-sim, axis=1)[:, :k]
    dense = np.zeros_like(sim)
    np.put_along_axis(dense, top, np.take_along_axis(sim, top, axis=1), axis=1)
    r = dense.sum(axis=1)
    ref = dense / np.sqrt(np.outer(r, r))
    g = knn_graph(x, k)
    assert g.nnz == 300 * k
    np.testing.assert_allclose(g.toarray(), ref, atol=1e-6)
    g_sym = knn_graph(x, k, method="flat_sym", chunk_size=64)
    np.testing.assert_allclose(g_sym.toarray(), ref, atol=1e-6)
    assert knn_graph(x, k, **MGCN_MODALITY_GRAPH).nnz == g.nnz
    st = graph_stats(g)
    assert st["self_loops"] == 300 and st["avg_degree"] == k and not st["symmetric"]


def test_egra_pt_preset():
    x = _clustered(200, 16, n_clusters=8)
    g = knn_graph_preset(x, 5, "egra_pt")
    same = knn_graph(x, 5, **EGRA_PRETRAINED_GRAPH)
    assert (g != same).nnz == 0
    st = graph_stats(g)
    assert st["symmetric"] and st["self_loops"] == 0
    assert st["weight_min"] == st["weight_max"] == 1.0
    assert st["min_degree"] >= 5  # at least its own 5, plus the reverse edges
    assert set(KNN_GRAPH_PRESETS) >= {"mgcn", "freedom", "egra_pt"}
    # FREEDOM: binary, every row has k edges → every weight is 1/k.
    f = knn_graph_preset(x, 5, "freedom")
    np.testing.assert_allclose(f.data, 0.2, atol=1e-7)
    with pytest.raises(ValueError, match="preset"):
        knn_graph_preset(x, 5, "lattice")


def test_zero_rows_have_no_edges():
    x = _clustered(50, 6, n_clusters=3)
    x[[4, 9]] = 0.0
    for kw in (MGCN_MODALITY_GRAPH, EGRA_PRETRAINED_GRAPH, {"weighted": False}):
        g = knn_graph(x, 5, **kw)
        assert np.isfinite(g.data).all()
        for z in (4, 9):
            assert g[z].nnz == 0 and g[:, z].nnz == 0
    assert graph_stats(knn_graph(x, 5))["isolated"] == 2


def test_graph_option_errors():
    x = np.random.default_rng(8).standard_normal((20, 4))
    with pytest.raises(ValueError, match="normalization"):
        knn_graph(x, 3, normalization="laplacian")
    with pytest.raises(TypeError, match="search option"):
        knn_graph(x, 3, nprob=4)
    g = knn_graph(x, 3, method="ivf", nlist=2, nprobe=2)
    assert g.nnz == 60


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["flat", "flat_sym", "ivf"])
def test_gpu_matches_cpu(method):
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("FAISS has no GPU here")
    x = _clustered(3000, 32, n_clusters=20)
    kw = {"nlist": 16, "nprobe": 16} if method == "ivf" else {}
    gpu_idx, gpu_sim = topk_neighbors(x, 10, exclude_self=True, method=method, device="cuda", **kw)
    cpu_idx, cpu_sim = topk_neighbors(x, 10, exclude_self=True, method="flat", device="cpu")
    np.testing.assert_allclose(gpu_sim, cpu_sim, atol=1e-4)
    same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gpu_idx, cpu_idx)])
    assert same >= 0.99
