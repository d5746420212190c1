"""EGRA: gradients, λ schedule, entity weights, ablation equivalences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from egra.models import EGRA
from egra.models.egra import entity_weights, weighted_nce
from egra.models.losses import info_nce
from egra.training.callbacks import AlignmentSchedule, lambda_at
from tests.toy_models import toy_data, toy_graphs, toy_item_graph


def _batch(d, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(d["train_users"]), (b,), generator=g)
    users = torch.as_tensor(d["train_users"])[idx]
    pos = torch.as_tensor(d["train_items"])[idx]
    neg = torch.randint(d["n_items"], (b,), generator=g)
    return users, pos, neg


@pytest.mark.parametrize("cross_pairs", [False, True])
def test_every_parameter_gets_a_gradient(cross_pairs):
    d = toy_data()
    torch.manual_seed(0)
    m = EGRA(**d, **toy_graphs(d), item_graph=toy_item_graph(d["n_items"]), cross_pairs=cross_pairs)
    out = m.loss(*_batch(d))
    out["loss"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert "align" in out and out["align"] > 0


def test_lambda_zero_adds_nothing():
    d = toy_data()
    torch.manual_seed(0)
    m = EGRA(**d, **toy_graphs(d), item_graph=toy_item_graph(d["n_items"]))
    batch = _batch(d)
    m.align_weight = 0.0
    out0 = m.loss(*batch)
    assert torch.allclose(out0["loss"], out0["bpr"] + out0["reg"])
    assert "align" not in out0
    m.align_weight = 0.5
    out1 = m.loss(*batch)
    assert torch.allclose(out1["loss"], out1["bpr"] + out1["reg"] + 0.5 * out1["align"], atol=1e-6)


def test_empty_graph_or_beta_zero_equals_no_enhanced_graph():
    d = toy_data()
    outs = []
    for kwargs in (
        {"item_graph": None},
        {"item_graph": sp.csr_matrix((d["n_items"], d["n_items"]), dtype=np.float32)},
        {"item_graph": toy_item_graph(d["n_items"]), "beta": 0.0},
    ):
        torch.manual_seed(0)
        m = EGRA(**d, **toy_graphs(d), **kwargs)
        outs.append(m.embeddings())
    for u, i in outs[1:]:
        assert torch.equal(u, outs[0][0]) and torch.equal(i, outs[0][1])
    torch.manual_seed(0)
    enhanced = EGRA(**d, **toy_graphs(d), item_graph=toy_item_graph(d["n_items"])).embeddings()
    assert not torch.allclose(enhanced[1], outs[0][1])


def test_joint_enhanced_graph_is_normalised_bipartite_with_item_block():
    d = toy_data()
    g = toy_item_graph(d["n_items"])
    m = EGRA(**d, **toy_graphs(d), item_graph=g, beta=0.5, pt_norm="joint")
    a = m.adj.a.to_dense().numpy()
    u = d["n_users"]
    r = np.zeros((u, d["n_items"]), dtype=np.float32)
    r[d["train_users"], d["train_items"]] = 1
    full = np.block([[np.zeros((u, u)), r], [r.T, 0.5 * g.toarray()]])
    deg = full.sum(1)
    dinv = np.where(deg > 0, deg**-0.5, 0)
    np.testing.assert_allclose(a, dinv[:, None] * full * dinv[None, :], rtol=1e-5, atol=1e-7)


def test_entity_weights_mean_one_and_order():
    a = torch.tensor([0.9, -0.2, 0.3, 0.0, 0.5])
    for mode in ("misaligned_up", "aligned_up", "uniform"):
        w = entity_weights(a, mode, tau_w=0.5)
        assert torch.isclose(w.mean(), torch.tensor(1.0))
    order = torch.argsort(a)
    w = entity_weights(a, "misaligned_up", 0.5)
    assert torch.all(w[order][1:] < w[order][:-1])  # less aligned -> larger weight
    w = entity_weights(a, "aligned_up", 0.5)
    assert torch.all(w[order][1:] > w[order][:-1])
    assert torch.equal(entity_weights(a, "uniform", 0.5), torch.ones(5))
    # Hand value: n * softmax(-a / tau)
    expected = 5 * torch.exp(-a / 0.5) / torch.exp(-a / 0.5).sum()
    assert torch.allclose(entity_weights(a, "misaligned_up", 0.5), expected)
    with pytest.raises(ValueError, match="entity_weighting"):
        entity_weights(a, "nope", 1.0)


def test_weighted_nce_uniform_equals_plain_nce_and_weights_are_detached():
    torch.manual_seed(0)
    b = torch.randn(8, 4, requires_grad=True)
    m = torch.randn(8, 4, requires_grad=True)
    loss, w, a = weighted_nce(b, m, 0.2, "uniform", 1.0)
    assert torch.allclose(loss, info_nce(b, m, 0.2))
    loss, w, a = weighted_nce(b, m, 0.2, "misaligned_up", 1.0)
    assert not w.requires_grad and not a.requires_grad
    per_row = info_nce(b, m, 0.2, reduction="none")
    assert torch.allclose(loss, (w * per_row).sum() / w.sum())


@pytest.mark.parametrize(
    "ramp,expected",
    [
        ("linear", lambda t: 0.01 + (0.5 - 0.01) * min(1, t / 4)),
        ("cosine", lambda t: 0.01 + (0.5 - 0.01) * (1 - math.cos(math.pi * min(1, t / 4))) / 2),
        ("step", lambda t: 0.01 if t < 4 else 0.5),
    ],
)
def test_lambda_schedule_formula(ramp, expected):
    for t in range(8):
        assert lambda_at(t, 0.01, 0.5, 4, ramp) == pytest.approx(expected(t))
    assert lambda_at(0, 0.01, 0.5, 4, ramp) == pytest.approx(0.01)
    assert lambda_at(4, 0.01, 0.5, 4, ramp) == pytest.approx(0.5)
    assert lambda_at(100, 0.01, 0.5, 4, ramp) == pytest.approx(0.5)
    # P = 0: constant lambda_max
    assert all(lambda_at(t, 0.01, 0.5, 0, ramp) == 0.5 for t in range(5))


def test_schedule_callback_sets_model_weight():
    class FakeModule:
        def __init__(self, net):
            self.net = net
            self.logged = {}

        def log(self, name, value, **kw):
            self.logged[name] = value

    class FakeTrainer:
        current_epoch = 0

    d = toy_data()
    net = EGRA(**d, **toy_graphs(d), item_graph=None)
    pl, tr = FakeModule(net), FakeTrainer()
    cb = AlignmentSchedule(lambda_min=0.1, lambda_max=0.3, P=2)
    seen = []
    for epoch in range(4):
        tr.current_epoch = epoch
        cb.on_train_epoch_start(tr, pl)
        seen.append(net.align_weight)
        assert pl.logged["align/lambda"] == net.align_weight
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3])


def _dense_norm(m: np.ndarray) -> np.ndarray:
    deg = m.sum(1)
    dinv = np.where(deg > 0, deg**-0.5, 0)
    return dinv[:, None] * m * dinv[None, :]


@pytest.mark.parametrize("weighted", [False, True])
def test_separate_normalisation_keeps_user_item_weights(weighted):
    """pt_norm=separate: norm([[0,R],[Rᵀ,0]]) + β·norm(S) in the item block, for any S values."""
    d = toy_data()
    g = toy_item_graph(d["n_items"])
    if weighted:  # similarity-weighted edges
        g.data = np.linspace(0.2, 1.0, g.nnz, dtype=np.float32)
        g = g.maximum(g.T).tocsr()
    m = EGRA(**d, **toy_graphs(d), item_graph=g, beta=0.3, pt_norm="separate")
    a = m.adj.a.to_dense().numpy()
    u, n = d["n_users"], d["n_items"]
    r = np.zeros((u, n), dtype=np.float32)
    r[d["train_users"], d["train_items"]] = 1
    expected = _dense_norm(np.block([[np.zeros((u, u)), r], [r.T, np.zeros((n, n))]]))
    expected[u:, u:] += 0.3 * _dense_norm(g.toarray())
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-7)
    # The user-item block equals LightGCN's; the joint form shrinks it.
    plain = EGRA(**d, **toy_graphs(d), item_graph=None).adj.a.to_dense().numpy()
    np.testing.assert_allclose(a[:u, u:], plain[:u, u:], rtol=1e-6)
    joint = EGRA(**d, **toy_graphs(d), item_graph=g, beta=0.3, pt_norm="joint").adj.a.to_dense().numpy()
    assert (joint[:u, u:].sum() < plain[:u, u:].sum()) and joint[u:, u:].any()


def test_align_scale_chance_divides_by_log_batch():
    d = toy_data()
    batch = _batch(d, b=16)
    losses = {}
    for scale in ("raw", "chance"):
        torch.manual_seed(0)
        m = EGRA(**d, **toy_graphs(d), item_graph=toy_item_graph(d["n_items"]), align_scale=scale)
        losses[scale] = m.loss(*batch)
    assert losses["chance"]["align"] == pytest.approx(float(losses["raw"]["align"]) / math.log(16), rel=1e-5)
    assert torch.allclose(losses["chance"]["bpr"], losses["raw"]["bpr"])


def _position_views(m, users, pos, neg):
    """A batch's views and, per batch position, the view rows of its user and of its positive."""
    uu, u_inv = torch.unique(users, return_inverse=True)
    ii, i_inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
    return m.views(uu, ii), u_inv, uu.shape[0] + i_inv[: users.shape[0]]


def test_align_views_per_modality_is_mean_of_modal_nces():
    d = toy_data()
    users, pos, neg = _batch(d)
    torch.manual_seed(0)
    m = EGRA(
        **d,
        **toy_graphs(d),
        item_graph=None,
        align_views="per_modality",
        entity_weighting="uniform",
        align_scale="raw",
    )
    out = m.loss(users, pos, neg)
    # Same numbers by hand: plain InfoNCE over batch positions, behavior view vs each E^m.
    v, u_inv, p = _position_views(m, users, pos, neg)
    expected = 0.0
    for mod in m.modalities:
        eb, em = v.content, v.modal[mod]
        expected = expected + info_nce(eb[u_inv], em[u_inv], m.tau_u)
        expected = expected + info_nce(eb[p], em[p], m.tau_i)
    assert float(out["align"]) == pytest.approx(float(expected.detach()) / len(m.modalities), rel=1e-4)
    with pytest.raises(ValueError, match="align_views"):
        EGRA(**d, **toy_graphs(d), item_graph=None, align_views="nope")
    with pytest.raises(ValueError, match="pt_norm"):
        EGRA(**d, **toy_graphs(d), item_graph=None, pt_norm="nope")


def test_lambda_warmup_holds_zero_then_ramps():
    vals = [lambda_at(t, 0.01, 0.05, 4, "linear", warmup=3) for t in range(10)]
    assert vals[:3] == [0.0, 0.0, 0.0]
    assert (
        vals[3] == pytest.approx(0.01) and vals[7] == pytest.approx(0.05) and vals[9] == pytest.approx(0.05)
    )
    assert vals[5] == pytest.approx(0.03)


def test_modality_input_purifier_is_mgcns_and_trains():
    """modality_input=purifier: MGCN's E_I ⊙ σ(G_m(W_m X_m + b_m)); gate has no G_m."""
    from egra.models import MGCN

    d = toy_data()
    torch.manual_seed(0)
    e = EGRA(**d, **toy_graphs(d), item_graph=None, modality_input="purifier")
    assert set(e.purifier) == set(e.modalities)
    for m in e.modalities:
        assert torch.equal(e.purified(m), MGCN.purified(e, m))
    out = e.loss(*_batch(d))
    out["loss"].backward()
    assert all(e.purifier[m].weight.grad.abs().sum() > 0 for m in e.modalities)
    gate = EGRA(**d, **toy_graphs(d), item_graph=None)
    assert len(gate.purifier) == 0
    with pytest.raises(ValueError, match="modality_input"):
        EGRA(**d, **toy_graphs(d), item_graph=None, modality_input="nope")


def test_align_anchor_modality_swaps_the_infonce_direction():
    d = toy_data()
    users, pos, neg = _batch(d)
    torch.manual_seed(0)
    m = EGRA(
        **d,
        **toy_graphs(d),
        item_graph=None,
        align_anchor="modality",
        entity_weighting="uniform",
        align_scale="raw",
    )
    out = m.loss(users, pos, neg)
    v, u_inv, p = _position_views(m, users, pos, neg)
    eb, emm = v.content, v.side
    expected = info_nce(emm[u_inv], eb[u_inv], m.tau_u) + info_nce(emm[p], eb[p], m.tau_i)
    assert float(out["align"]) == pytest.approx(float(expected.detach()), rel=1e-4)
    behavior = info_nce(eb[u_inv], emm[u_inv], m.tau_u) + info_nce(eb[p], emm[p], m.tau_i)
    assert abs(float(expected.detach()) - float(behavior.detach())) > 1e-4  # the direction matters
    with pytest.raises(ValueError, match="align_anchor"):
        EGRA(**d, **toy_graphs(d), item_graph=None, align_anchor="nope")
