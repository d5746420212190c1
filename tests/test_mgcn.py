"""MGCN: graphs, forward and loss against dense re-implementations of the written spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from egra.graphs import modality_graphs
from egra.models import MGCN
from egra.models.losses import info_nce, info_nce_counts

N_USERS, N_ITEMS, K = 14, 17, 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    users = rng.integers(0, N_USERS - 1, size=60)  # the last user has no train rows
    items = rng.integers(0, N_ITEMS - 1, size=60)  # nor does the last item
    features = {
        "text": rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
        "image": rng.normal(size=(N_ITEMS, 20)).astype(np.float32),
    }
    return {
        "n_users": N_USERS,
        "n_items": N_ITEMS,
        "train_users": users,
        "train_items": items,
        "features": features,
        "modality_graphs": modality_graphs(features, K, device="cpu"),
    }


def make(data, **kw) -> MGCN:
    torch.manual_seed(0)
    kw.setdefault("embedding_dim", 8)
    return MGCN(**data, **kw)


def batch(seed: int = 1, size: int = 9):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, N_USERS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
    )


# --------------------------------------------------------------- dense references
def dense_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Protocol (f): dense cosine, top-k per row incl. self, cosine weights, w/√(r_i r_j), row sums."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    w = np.zeros_like(sim)
    for i in range(sim.shape[0]):
        top = np.argsort(-sim[i])[:k]
        w[i, top] = sim[i, top]
    r = w.sum(1)
    d = np.where(r > 0, 1.0 / np.sqrt(np.where(r > 0, r, 1.0)), 0.0)
    return d[:, None] * w * d[None, :]


def dense_norm_adj(users, items, n_users, n_items) -> np.ndarray:
    r = np.zeros((n_users, n_items))
    r[users, items] = 1.0
    a = np.zeros((n_users + n_items, n_users + n_items))
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    deg = a.sum(1)
    d = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return d[:, None] * a * d[None, :]


def dense_forward(model: MGCN, data) -> dict[str, torch.Tensor]:
    """MGCN's equations with dense float64 matrices and the model's parameters."""
    f64 = lambda t: t.detach().double()  # noqa: E731
    lin = lambda layer, x: x @ f64(layer.weight).T + (f64(layer.bias) if layer.bias is not None else 0)  # noqa: E731
    nu, ni = data["n_users"], data["n_items"]
    a = torch.from_numpy(dense_norm_adj(data["train_users"], data["train_items"], nu, ni))
    e_u, e_i = f64(model.user_emb), f64(model.item_emb)

    x = torch.cat([e_u, e_i])
    layers = [x]
    for _ in range(model.n_ui_layers):
        x = a @ x
        layers.append(x)
    c = torch.stack(layers).mean(0)

    r_hat = a[:nu, nu:]
    modal = {}
    for m in model.modalities:
        s = torch.from_numpy(dense_knn(data["features"][m].astype(np.float64), K))
        f = lin(model.proj[m], f64(model.feature(m)))
        h = e_i * torch.sigmoid(lin(model.purifier[m], f))
        for _ in range(model.n_layers):
            h = s @ h
        modal[m] = torch.cat([r_hat @ h, h])

    q = model.query
    scores = [lin(q[2], torch.tanh(lin(q[0], modal[m]))) for m in model.modalities]  # [N, 1] each
    alpha = torch.softmax(torch.cat(scores, dim=1), dim=1)  # [N, M]
    common = sum(alpha[:, j : j + 1] * modal[m] for j, m in enumerate(model.modalities))
    specific = [torch.sigmoid(lin(model.prefer[m], c)) * (modal[m] - common) for m in model.modalities]
    side = (sum(specific) + common) / (len(model.modalities) + 1)
    return {"content": c, "side": side, "fused": c + side, "modal": modal}


# ----------------------------------------------------------------------- tests
def test_shapes_and_defaults(data):
    model = make(data)
    assert model.modalities == ("image", "text")
    v = model.views()
    n = N_USERS + N_ITEMS
    for t in (v.content, v.side, v.fused, *v.modal.values()):
        assert t.shape == (n, 8)
    u, i = model.embeddings()
    assert u.shape == (N_USERS, 8) and i.shape == (N_ITEMS, 8)
    assert model.score(u, i, torch.tensor([0, 3])).shape == (2, N_ITEMS)
    m = MGCN(**data)
    assert (m.embedding_dim, m.n_ui_layers, m.n_layers) == (64, 2, 1)
    assert (m.reg_weight, m.cl_loss, m.tau, m.reg_denominator, m.train_features) == (
        1e-4,
        0.01,
        0.2,
        2048,
        True,
    )


def test_every_parameter_gets_a_gradient(data):
    model = make(data, cl_loss=0.5)
    names = {n for n, _ in model.named_parameters()}
    assert {"feat_image", "feat_text", "user_emb", "item_emb"} <= names
    model.loss(*batch())["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_frozen_features_are_constants_outside_parameters_and_buffers(data):
    model = make(data, train_features=False)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("feat_") for n in names)
    assert not model.feature("image").requires_grad
    # Not buffers either: DDP would broadcast them from rank 0 before every step.
    assert list(model.buffers()) == []
    assert not any(k.startswith("feat_") for k in model.state_dict())
    np.testing.assert_array_equal(model.feature("image").numpy(), data["features"]["image"])
    model.loss(*batch())["loss"].backward()  # still trains the rest
    assert model.proj["image"].weight.grad.abs().sum() > 0
    model.double()  # they move and cast with the model
    assert model.feature("image").dtype == torch.float64 and model.feature("text").dtype == torch.float64


def test_graph_buffers_not_in_checkpoint(data):
    keys = make(data).state_dict().keys()
    assert not any("item_graphs" in k or k.startswith(("adj.", "r_hat.")) for k in keys)
    assert "feat_text" in keys


@pytest.mark.parametrize("m", ["image", "text"])
def test_modality_graph_matches_dense_reference(data, m):
    model = make(data)
    got = model.item_graphs[m].a.to_dense().numpy()
    ref = dense_knn(data["features"][m].astype(np.float64), K)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert ((got != 0).sum(1) == K).all()  # self plus k-1 neighbours, directed
    assert np.allclose(np.diag(got), np.diag(ref)) and (np.diag(got) > 0).all()


@pytest.mark.parametrize("n_layers", [1, 2])
def test_forward_matches_dense_reimplementation(data, n_layers):
    model = make(data, n_layers=n_layers)
    # perturb every parameter so biases and features differ from their initial values
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    v = model.views()
    ref = dense_forward(model, data)
    for key in ("content", "side", "fused"):
        torch.testing.assert_close(getattr(v, key).double(), ref[key], atol=1e-5, rtol=1e-5)
    for m in model.modalities:
        torch.testing.assert_close(v.modal[m].double(), ref["modal"][m], atol=1e-5, rtol=1e-5)
    u, i = model.embeddings()
    torch.testing.assert_close(torch.cat([u, i]).double(), ref["fused"], atol=1e-5, rtol=1e-5)


def test_loss_components(data):
    users, pos, neg = batch(size=11)
    model = make(data, cl_loss=0.0, reg_weight=0.3, reg_denominator=7)
    out = model.loss(users, pos, neg)
    assert set(out) == {"loss", "bpr", "reg", "cl"}
    z_u, z_i = model.embeddings()
    u, p, n = z_u[users], z_i[pos], z_i[neg]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 0.3 * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 7
    torch.testing.assert_close(out["bpr"], bpr.detach())
    torch.testing.assert_close(out["reg"], reg.detach())
    assert out["cl"] == 0
    torch.testing.assert_close(out["loss"].detach(), (bpr + reg).detach())

    model = make(data, cl_loss=0.25, tau=0.3)
    out = model.loss(users, pos, neg)
    v = model.views()
    c_u, c_i = model.split(v.content)
    s_u, s_i = model.split(v.side)

    def nce(a, b):  # mean_r −log softmax_r'(cos(a_r, b_r') / τ)[r]
        sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.3
        return (torch.logsumexp(sim, dim=1) - sim.diagonal()).mean()

    cl = 0.25 * (nce(s_i[pos], c_i[pos]) + nce(s_u[users], c_u[users]))
    torch.testing.assert_close(out["cl"], cl.detach())
    torch.testing.assert_close(out["loss"].detach(), out["bpr"] + out["reg"] + out["cl"])


def test_batch_rows_match_full_views(data):
    model = make(data)
    full = model.views()
    users = torch.tensor([3, 0, 3, 13])
    items = torch.tensor([16, 2, 2, 0, 5])
    cases = [
        (model.views(users, items), torch.cat([users, items + N_USERS])),
        (model.views(users=users), users),
        (model.views(items=items), items + N_USERS),
    ]
    for sub, rows in cases:
        for key in ("content", "side", "fused"):
            torch.testing.assert_close(getattr(sub, key), getattr(full, key)[rows])
        for m in model.modalities:
            torch.testing.assert_close(sub.modal[m], full.modal[m][rows])


@pytest.mark.parametrize("tau", [0.3, 0.02])  # 0.02: large 1/τ, row-max shifted path
def test_info_nce_counts_equals_repeated_rows(tau):
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 2, 2, 5, 1, 2, 0, 4, 4, 3])
    a = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ref = info_nce(a[ids], b[ids], tau)
    ga, gb = torch.autograd.grad(ref, (a, b))
    uniq, counts = ids.unique(return_counts=True)
    got = info_nce_counts(a[uniq], b[uniq], tau, counts)
    ha, hb = torch.autograd.grad(got, (a, b))
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(ha, ga)
    torch.testing.assert_close(hb, gb)
    # no counts: plain InfoNCE
    torch.testing.assert_close(info_nce_counts(a, b, tau), info_nce(a, b, tau))
    c = counts.double()
    x, y = a[uniq].detach().requires_grad_(), b[uniq].detach().requires_grad_()
    torch.autograd.gradcheck(lambda x, y: info_nce_counts(x, y, tau, c), (x, y))
    # float32 stays finite at the default τ with a large batch
    big = torch.randn(512, 16, generator=g)
    assert torch.isfinite(info_nce_counts(big, big.flip(0), 0.2, torch.full((512,), 7)))


def test_loss_and_gradients_match_naive_batch_computation(data):
    """Distinct-row fuser and counted NCE give the per-position numbers and gradients."""
    users = torch.tensor([2, 2, 5, 0, 2, 7, 5, 11, 13])
    pos = torch.tensor([1, 1, 4, 9, 1, 1, 16, 3, 4])
    neg = torch.tensor([4, 8, 1, 2, 2, 0, 5, 16, 4])
    model = make(data, cl_loss=0.3)
    out = model.loss(users, pos, neg)
    got = torch.autograd.grad(out["loss"], list(model.parameters()))

    v = model.views()
    z_u, z_i = model.split(v.fused)
    c_u, c_i = model.split(v.content)
    s_u, s_i = model.split(v.side)
    u, p, n = z_u[users], z_i[pos], z_i[neg]
    bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = model.reg_weight * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 2048
    cl = 0.3 * (info_nce(s_i[pos], c_i[pos], 0.2) + info_nce(s_u[users], c_u[users], 0.2))
    ref = bpr + reg + cl
    want = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(out["loss"], ref)
    torch.testing.assert_close(out["cl"], cl.detach())
    for (name, _), g1, g2 in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4, msg=name)


def test_single_modality(data):
    only_text = {k: v for k, v in data.items() if k != "features"} | {
        "features": {"text": data["features"]["text"]}
    }
    for model in (make(only_text), make(data, modalities=["text"])):
        assert model.modalities == ("text",)
        v = model.views()
        torch.testing.assert_close(v.side, v.modal["text"] / 2)
        assert v.fused.shape == (N_USERS + N_ITEMS, 8)
        model.loss(*batch())["loss"].backward()
    ref = dense_forward(model, data)
    torch.testing.assert_close(v.fused.double(), ref["fused"], atol=1e-5, rtol=1e-5)


def test_bad_features(data):
    base = {k: v for k, v in data.items() if k != "features"}
    for features in (None, {}):
        with pytest.raises(ValueError, match="at least one modality"):
            MGCN(**base, features=features)
    with pytest.raises(ValueError, match="not in features"):
        MGCN(**data, modalities=["audio"])
    with pytest.raises(ValueError, match="at least one modality"):
        MGCN(**data, modalities=[])


def test_missing_or_misshapen_modality_graph_is_an_error(data):
    graphs = data["modality_graphs"]
    with pytest.raises(ValueError, match=r"no kNN graph S_m for modalities \['text'\]"):
        MGCN(**{**data, "modality_graphs": {"image": graphs["image"]}})
    with pytest.raises(ValueError, match="has shape"):
        MGCN(**{**data, "modality_graphs": {**graphs, "text": graphs["text"][:-1]}})


def test_item_representations(data):
    model = make(data)
    v = model.views()
    torch.testing.assert_close(model.item_representations(), v.fused[N_USERS:].detach())
    torch.testing.assert_close(model.item_representations("id"), v.content[N_USERS:].detach())
    torch.testing.assert_close(model.item_representations("modality"), v.side[N_USERS:].detach())
    assert not model.item_representations().requires_grad
    assert model.training
    with pytest.raises(ValueError):
        model.item_representations("bogus")


def test_overfits_tiny_data(data):
    model = make(data, cl_loss=0.01)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    users, pos, neg = batch(size=32)
    first = model.loss(users, pos, neg)["loss"].item()
    for _ in range(40):
        opt.zero_grad()
        loss = model.loss(users, pos, neg)["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_training_does_not_touch_callers_features(data):
    before = {m: x.copy() for m, x in data["features"].items()}
    t_text = torch.from_numpy(data["features"]["text"].copy())
    model = MGCN(**{**data, "features": {**data["features"], "text": t_text}}, embedding_dim=8)
    with torch.no_grad():
        for m in model.modalities:
            model.feature(m).add_(1.0)
    for m, x in before.items():
        np.testing.assert_array_equal(data["features"][m], x)
    torch.testing.assert_close(t_text, torch.from_numpy(before["text"]))
