"""The performance work changed how things are computed, never what: fast paths vs references.

Each fast path is checked against the plain computation it replaced (kept here as the
reference): the scipy sparse products and their row-restricted form, the blocked
feature projection, LightGCN's batch-only propagation and EGRA's distinct-row alignment
loss. The last test trains seeded tiny runs through the whole pipeline twice, once with
the fast paths and once with every reference patched in, and asks for the same metrics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from egra.graphs import sparse as sparse_mod
from egra.graphs.sparse import SparseOp
from egra.models import EGRA, LightGCN
from egra.models.base import Recommender
from egra.models.egra import weighted_nce
from egra.models.lightgcn import BPRMF, propagate_mean
from egra.models.losses import bpr_loss, info_nce, l2_squared
from egra.models.mgcn import MGCN, _BlockedLinear, project
from tests.toy_models import toy_data, toy_graphs, toy_item_graph

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_graph(n_rows: int, n_cols: int, density: float, seed: int, symmetric: bool) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = sp.random(n_rows, n_cols, density=density, random_state=rng, dtype=np.float32, format="csr")
    if symmetric:
        m = ((m + m.T) * 0.5).tocsr()
    return m


def _batch_with_repeats(n_users, n_items, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(n_users // 2, (b,), generator=g)  # few distinct users: many repeats
    pos = torch.randint(n_items // 2, (b,), generator=g)
    neg = torch.randint(n_items, (b,), generator=g)
    return users, pos, neg


# ------------------------------------------------------------------ references
def ref_sparse_forward(self: SparseOp, x):
    """The product as a plain dense matmul (what every sparse path must equal)."""
    a = self.a.to_dense().to(x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)
    return a @ x.to(a.dtype)


def ref_sparse_rows(self: SparseOp, x, rows, x_rows=None):
    assert x_rows is None  # the reference path computes whole item views
    return self(x)[rows]


def ref_egra_loss(self: EGRA, users, pos, neg):
    """EGRA's loss as first written: every batch position its own row, full views."""
    b = users.shape[0]
    v = self.views(users, torch.cat([pos, neg]))
    u, p, n = v.fused[:b], v.fused[b : 2 * b], v.fused[2 * b :]
    bpr = bpr_loss(u, p, n)
    reg = self.reg_weight * l2_squared(u, p, n, denom=self.reg_denominator)
    out = {"bpr": bpr.detach(), "reg": reg.detach()}
    total = bpr + reg
    lam = float(self.align_weight)
    if lam != 0.0:
        eb = v.content
        targets = [v.side] if self.align_views == "fused" else [v.modal[m] for m in self.modalities]
        mode, tw = self.entity_weighting, self.tau_w
        align, ws, degrees = 0.0, [], []
        for emm in targets:
            x, y = (emm, eb) if self.align_anchor == "modality" else (eb, emm)
            l_u, w_u, a_u = weighted_nce(x[:b], y[:b], self.tau_u, mode, tw)
            l_i, w_i, a_i = weighted_nce(x[b : 2 * b], y[b : 2 * b], self.tau_i, mode, tw)
            align = align + (l_u + l_i) / len(targets)
            ws.append(torch.cat([w_u, w_i]))
            degrees.append((a_u.mean(), a_i.mean()))
        if self.cross_pairs:
            align = align + info_nce(eb[:b], v.side[b : 2 * b], self.tau_u)
        if self.align_scale == "chance":
            align = align / math.log(b)
        total = total + lam * align
        w = torch.stack(ws).mean(0)
        a_u, a_i = (torch.stack(x).mean() for x in zip(*degrees))
        out.update(
            {
                "align": align.detach(),
                "align/weight_mean": w.mean(),
                "align/weight_min": w.min(),
                "align/weight_max": w.max(),
                "align/degree_user": a_u,
                "align/degree_item": a_i,
            }
        )
    out["loss"] = total
    return out


def ref_propagate_mean(op, x0, n_layers, rows=None):
    """LightGCN's layer mean through plain autograd, rows taken from the full result."""
    out, x = x0, x0
    for _ in range(n_layers):
        x = op(x)
        out = out + x
    out = out / (n_layers + 1)
    return out if rows is None else out[rows]


def ref_eval_step(self, batch) -> None:
    """Evaluation as MMRec does it: torch.topk of the masked scores, hits looked up."""
    from egra.metrics import chunk_metric_sums, group_truth

    scores = self.net.score(self._emb[0], self._emb[1], batch["users"])
    scores[batch["mask_rows"], batch["mask_items"]] = float("-inf")
    topk = torch.topk(scores, min(max(self.ks), scores.shape[1]), dim=1).indices
    rows, items = batch["truth_rows"], batch["truth_items"]

    def add(r, i, ks, tag=""):
        sums, n = chunk_metric_sums(topk, r, i, self.net.n_items, ks)
        if n:
            for key, val in sums.items():
                self._add(tag + key, val)
            self._add(tag + "#users", torch.tensor(n))

    add(rows, items, self.ks)
    if self.item_groups is not None and self._prefix == "test":
        for g in range(int(self.item_groups.max()) + 1):
            add(*group_truth(rows, items, self.item_groups, g), self.group_ks, f"popgroup{g}/")


def patch_references(monkeypatch) -> None:
    """Swap every fast path for its reference (the code before the performance work)."""
    from egra.training.module import RecommenderModule

    monkeypatch.setattr(SparseOp, "forward", ref_sparse_forward)
    monkeypatch.setattr(SparseOp, "rows", ref_sparse_rows)
    monkeypatch.setattr("egra.models.lightgcn.propagate_mean", ref_propagate_mean)
    monkeypatch.setattr("egra.models.mgcn.propagate_mean", ref_propagate_mean)
    monkeypatch.setattr(RecommenderModule, "_eval_step", ref_eval_step)
    monkeypatch.setattr("egra.models.mgcn.project", lambda layer, x: layer(x))
    monkeypatch.setattr("egra.models.egra.project", lambda layer, x: layer(x))
    monkeypatch.setattr(LightGCN, "loss", BPRMF.loss)
    monkeypatch.setattr(MGCN, "_batch_items", lambda self, users, items: None)
    monkeypatch.setattr(EGRA, "loss", ref_egra_loss)


# ----------------------------------------------------------------------- tests
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_op_forward_backward_and_rows(symmetric, dtype):
    n = 60
    m = _random_graph(n, n, 0.1, seed=3, symmetric=symmetric)
    op = SparseOp(m)
    if dtype == torch.float64:
        op = op.double()
    assert op.symmetric == symmetric
    dense = torch.from_numpy(m.toarray()).to(dtype)
    x = torch.randn(n, 5, dtype=dtype, requires_grad=True)
    g = torch.randn(n, 5, dtype=dtype)
    y = op(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, dense @ x)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, dense.T @ g)

    rows = torch.tensor([7, 3, 3, 59, 0, 12])
    yr = op.rows(x, rows)
    torch.testing.assert_close(yr, (dense @ x)[rows])
    # Same dot products as the full product's rows, bit for bit.
    assert torch.equal(yr, op(x)[rows])
    gr = torch.randn(len(rows), 5, dtype=dtype)
    (gxr,) = torch.autograd.grad(yr, x, gr)
    torch.testing.assert_close(gxr, dense[rows].T @ gr)
    with torch.no_grad():
        assert torch.equal(op(x), y.detach())
    if dtype == torch.float64:
        torch.autograd.gradcheck(lambda t: op.rows(t, rows), (x.detach().clone().requires_grad_(),))
        torch.autograd.gradcheck(op, (x.detach().clone().requires_grad_(),))


def test_sparse_op_rectangular():
    m = _random_graph(40, 25, 0.15, seed=5, symmetric=False)
    op = SparseOp(m)
    dense = torch.from_numpy(m.toarray())
    x = torch.randn(25, 4, requires_grad=True)
    y = op(x)
    torch.testing.assert_close(y, dense @ x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, dense.T @ torch.ones(40, 4))
    rows = torch.tensor([39, 1, 1])
    torch.testing.assert_close(op.rows(x, rows), (dense @ x)[rows])


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_propagate_rows_equals_full_rows(n_layers):
    op = SparseOp(_random_graph(50, 50, 0.1, seed=1, symmetric=True))
    x0 = torch.randn(50, 6, requires_grad=True)
    rows = torch.tensor([4, 9, 9, 49, 0])
    full = propagate_mean(op, x0, n_layers)
    part = propagate_mean(op, x0, n_layers, rows)
    assert torch.equal(part, full[rows])
    g = torch.randn_like(part)
    (g_full,) = torch.autograd.grad(full[rows], x0, g)
    (g_part,) = torch.autograd.grad(part, x0, g)
    torch.testing.assert_close(g_part, g_full)


def test_blocked_linear_matches_linear():
    """Same products as F.linear up to float32 summation order (its backward runs in numpy's BLAS)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4096, 16)
    x = torch.randn(1100, 4096, requires_grad=True)  # > 2^22 entries: the blocked path
    y = project(layer, x)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)
    ref_y = F.linear(x, layer.weight, layer.bias)
    want = torch.autograd.grad(ref_y, (x, layer.weight, layer.bias), g)
    torch.testing.assert_close(y, ref_y, rtol=1e-6, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    args = (
        torch.randn(600, 7, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 7, dtype=torch.float64, requires_grad=True),
        torch.randn(3, dtype=torch.float64, requires_grad=True),
    )
    torch.autograd.gradcheck(_BlockedLinear.apply, args)
    torch.autograd.gradcheck(lambda a, w: _BlockedLinear.apply(a, w, None), args[:2])


def _grads(model: Recommender, loss) -> dict[str, torch.Tensor]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params, grads)}


def test_lightgcn_batch_loss_equals_full_forward_loss():
    d = toy_data()
    torch.manual_seed(0)
    model = LightGCN(**d, embedding_dim=8, n_layers=2)
    batch = _batch_with_repeats(d["n_users"], d["n_items"])
    got = model.loss(*batch)
    want = BPRMF.loss(model, *batch)  # BPR on the full embeddings()
    for key in ("loss", "bpr", "reg"):
        torch.testing.assert_close(got[key], want[key])
    g1, g2 = _grads(model, got["loss"]), _grads(model, want["loss"])
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], msg=name)


@pytest.mark.parametrize("mode", ["misaligned_up", "aligned_up", "uniform"])
@pytest.mark.parametrize("cross_pairs", [False, True])
@pytest.mark.parametrize("tau_w", [1.0, 0.02])  # 0.02: softmax logits up to 50
def test_egra_distinct_row_loss_equals_per_position_reference(mode, cross_pairs, tau_w):
    d = toy_data()
    torch.manual_seed(0)
    model = EGRA(
        **d,
        **toy_graphs(d, 4),
        item_graph=toy_item_graph(d["n_items"]),
        embedding_dim=8,
        entity_weighting=mode,
        cross_pairs=cross_pairs,
        tau_w=tau_w,
    )
    model.align_weight = 0.3
    batch = _batch_with_repeats(d["n_users"], d["n_items"])
    got = model.loss(*batch)
    want = ref_egra_loss(model, *batch)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    g1, g2 = _grads(model, got["loss"]), _grads(model, want["loss"])
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "options",
    [
        {"align_anchor": "modality"},
        {"align_views": "per_modality"},
        {"align_scale": "chance", "align_anchor": "modality", "align_views": "per_modality"},
    ],
)
def test_egra_alignment_options_equal_per_position_reference(options):
    d = toy_data()
    torch.manual_seed(0)
    model = EGRA(**d, **toy_graphs(d, 4), item_graph=toy_item_graph(d["n_items"]), embedding_dim=8, **options)
    model.align_weight = 0.3
    batch = _batch_with_repeats(d["n_users"], d["n_items"])
    got, want = model.loss(*batch), ref_egra_loss(model, *batch)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    g1, g2 = _grads(model, got["loss"]), _grads(model, want["loss"])
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("subsets", [False, True], ids=["default", "row-subsets"])
@pytest.mark.parametrize("model", ["lightgcn", "mgcn", "egra"])
def test_seeded_tiny_runs_match_reference_paths(cfg_factory, monkeypatch, model, subsets):
    """Whole pipeline (pretrain -> S^pt -> train -> valid/test), fast paths vs references.

    ``row-subsets`` forces the large-catalog path (lower layers and item views kept to the
    rows a batch reads), which tiny data would not take on its own.
    """
    from egra.pipeline.train import run

    over = [f"model={model}", "trainer.max_epochs=3", "backbones.mgcn.max_epochs=2", "graph.device=cpu"]
    with monkeypatch.context() as mp:
        if subsets:
            mp.setattr(sparse_mod, "MAX_ROW_SUBSET", 1.0)
        fast = run(cfg_factory(over, sub="fast"))
    with monkeypatch.context() as mp:
        patch_references(mp)
        ref = run(cfg_factory(over, sub="ref"))
    keys = [k for k in ref if k.startswith(("valid/", "test/"))]
    assert keys and "test/Recall@20" in keys
    for key in keys:
        assert fast[key] == pytest.approx(ref[key], abs=1e-6), key
    assert fast["best_epoch"] == ref["best_epoch"]


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_blocked_truth_ranks_equal_topk_positions(block, monkeypatch):
    """Scoring / masking / ranking in row blocks puts every held-out item where torch.topk does."""
    from egra.training.module import RecommenderModule

    torch.manual_seed(0)
    n_items = 80
    net = BPRMF(n_users=50, n_items=n_items, embedding_dim=6)
    module = RecommenderModule(net, optimizer=torch.optim.Adam, ks=(5, 20))
    module._emb = net.export()
    users = torch.tensor([3, 49, 0, 7, 7, 12, 30, 31, 32, 33, 40, 41, 44, 45, 46, 2, 5, 9, 11, 13])
    rng = np.random.default_rng(0)
    m = sp.random(len(users), n_items, density=0.3, random_state=rng, format="csr").tocoo()
    mask_rows, mask_items = torch.from_numpy(m.row.astype(np.int64)), torch.from_numpy(m.col.astype(np.int64))
    truth = sp.random(len(users), n_items, density=0.1, random_state=rng, format="csr")
    truth = (
        truth - truth.multiply(sp.csr_matrix((np.ones(m.nnz), (m.row, m.col)), shape=truth.shape))
    ).tocoo()
    truth.eliminate_zeros()
    t_rows, t_items = (
        torch.from_numpy(truth.row.astype(np.int64)),
        torch.from_numpy(truth.col.astype(np.int64)),
    )

    scores = net.score(*module._emb, users)
    scores[mask_rows, mask_items] = float("-inf")
    order = torch.topk(scores, n_items, dim=1, sorted=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(n_items).expand_as(order))
    monkeypatch.setattr(RecommenderModule, "SCORE_BLOCK", block)
    perm = torch.randperm(len(mask_rows))  # mask pairs in any order
    batch = {
        "users": users,
        "mask_rows": mask_rows[perm],
        "mask_items": mask_items[perm],
        "truth_rows": t_rows,
        "truth_items": t_items,
    }
    rows, items, ranks = module._truth_ranks(batch)
    assert len(rows) == len(t_rows) > 20
    assert torch.equal(ranks, position[rows, items])


@pytest.mark.parametrize("max_subset", [0.0, 1.0])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_mean_rows_gradient(n_layers, max_subset, monkeypatch):
    """LightGCN's rows-only propagation (hand-written backward) against autograd of the full one.

    ``max_subset`` 0 keeps every lower layer full, 1 keeps each on the rows it feeds.
    """
    from egra.graphs import SparseOp, normalized_bipartite
    from egra.models.lightgcn import propagate_mean

    monkeypatch.setattr(sparse_mod, "MAX_ROW_SUBSET", max_subset)

    rng = np.random.default_rng(n_layers)
    r = sp.random(9, 7, density=0.4, random_state=rng, format="csr")
    r.data[:] = 1.0
    op = SparseOp(normalized_bipartite(r))
    rows = torch.tensor([0, 3, 3, 15, 8, 2])  # repeats allowed
    x0 = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    got = propagate_mean(op, x0, n_layers, rows)
    want = propagate_mean(op, x0, n_layers)[rows]
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad(got, x0, g)
    (wx,) = torch.autograd.grad(want, x0, g)
    torch.testing.assert_close(gx, wx)
    torch.autograd.gradcheck(lambda x: propagate_mean(op, x, n_layers, rows), (x0,))

    # With the ego rows: both outputs' gradients, together and each alone.
    from egra.models.lightgcn import propagate_mean_rows

    out, ego = propagate_mean_rows(op, x0, n_layers, rows)
    want = propagate_mean(op, x0, n_layers)[rows]
    assert torch.equal(ego, x0[rows])
    torch.testing.assert_close(out, want)
    ge = torch.randn_like(ego)
    (gx,) = torch.autograd.grad((out * g).sum() + (ego * ge).sum(), x0)
    (wx,) = torch.autograd.grad((want * g).sum() + (x0[rows] * ge).sum(), x0)
    torch.testing.assert_close(gx, wx)
    (gx,) = torch.autograd.grad(propagate_mean_rows(op, x0, n_layers, rows)[1].pow(2).sum(), x0)
    (wx,) = torch.autograd.grad(x0[rows].pow(2).sum(), x0)
    torch.testing.assert_close(gx, wx)
    torch.autograd.gradcheck(lambda x: propagate_mean_rows(op, x, n_layers, rows), (x0,))


@pytest.mark.parametrize("n_layers", [2, 3])
def test_mean_rows_subset_layers_match_full(n_layers, monkeypatch):
    """On a sparse graph a few rows read a part of each lower layer: same values as full layers."""
    from egra.graphs import SparseOp, normalized_bipartite
    from egra.models.lightgcn import _needed_rows, propagate_mean_rows

    rng = np.random.default_rng(7)
    r = sp.random(300, 200, density=0.01, random_state=rng, format="csr")
    r.data[:] = 1.0
    op = SparseOp(normalized_bipartite(r))
    a = op.cpu_matrices(torch.zeros(1))[0]
    rows = torch.tensor([3, 17, 17, 301, 450])
    levels = _needed_rows(a, a[rows.numpy()], rows.numpy(), n_layers, 1.0)
    assert len(levels) == n_layers - 1
    for s, a_s in levels:
        assert len(s) < a.shape[0] // 2  # a real subset
        assert np.isin(rows.numpy(), s).all()
        assert (a_s != a[s]).nnz == 0
    x0 = torch.randn(500, 4, dtype=torch.float64, requires_grad=True)
    g, ge = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    results = {}
    for max_subset in (0.0, 1.0):
        monkeypatch.setattr(sparse_mod, "MAX_ROW_SUBSET", max_subset)
        out, ego = propagate_mean_rows(op, x0, n_layers, rows)
        (gx,) = torch.autograd.grad((out * g).sum() + (ego * ge).sum(), x0)
        results[max_subset] = (out, gx)
    # Forward: the same sums term for term; backward: the same up to summation order.
    assert torch.equal(results[0.0][0], results[1.0][0])
    torch.testing.assert_close(results[0.0][1], results[1.0][1])
    torch.autograd.gradcheck(lambda x: propagate_mean_rows(op, x, n_layers, rows), (x0,))


def test_sparse_rows_of_a_row_subset():
    """``SparseOp.rows(x[cols], rows, x_rows=cols)`` equals ``(A @ x)[rows]``; columns() finds cols."""
    m = _random_graph(80, 60, 0.05, seed=11, symmetric=False)
    op = SparseOp(m)
    rows = torch.tensor([5, 70, 5, 33])
    extra = torch.tensor([59])
    cols = op.columns(rows, extra)
    dense = m.toarray()
    want_cols = np.union1d(np.flatnonzero(dense[rows.numpy()].any(0)), [59])
    np.testing.assert_array_equal(cols, want_cols)
    x = torch.randn(60, 3, dtype=torch.float32, requires_grad=True)
    got = op.rows(x[torch.from_numpy(cols)], rows, x_rows=cols)
    assert torch.equal(got, op.rows(x, rows))
    (gx,) = torch.autograd.grad(got.sum(), x)
    (wx,) = torch.autograd.grad(op.rows(x, rows).sum(), x)
    torch.testing.assert_close(gx, wx)
    with pytest.raises(ValueError, match="outside"):
        op.rows(x[:5], rows, x_rows=np.arange(5))
    # torch's CSR path (what other devices take): the same rows.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SparseOp, "cpu_matrices", lambda self, x: None)
        torch.testing.assert_close(op.rows(x[torch.from_numpy(cols)], rows, x_rows=cols), got)


@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_mgcn_batch_views_on_item_subsets(n_layers, monkeypatch):
    """MGCN's batch views computed on the items the batch reads equal those of whole item views."""
    d = toy_data(n_users=60, n_items=80)
    torch.manual_seed(0)
    model = MGCN(**d, **toy_graphs(d, 3), embedding_dim=8, n_layers=n_layers)
    users, items = torch.tensor([4, 9, 9, 31]), torch.tensor([0, 77, 5, 5, 40])
    need = MGCN._batch_items(model, users, items)
    assert need is not None and len(need) < model.n_items  # a real subset
    results = []
    for part in (0.0, 1.0):
        monkeypatch.setattr(sparse_mod, "MAX_ROW_SUBSET", part)
        assert (model._batch_items(users, items) is None) == (part == 0.0)
        v = model.views(users, items)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(v.fused.pow(2).sum() + v.side.sum(), params, allow_unused=True)
        results.append((v, grads))
    (v0, g0), (v1, g1) = results
    assert torch.equal(v0.fused, v1.fused)
    for m in model.modalities:
        assert torch.equal(v0.modal[m], v1.modal[m])
    for a, b in zip(g0, g1, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b)
