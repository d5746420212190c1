"""FREEDOM: graphs, forward, loss and edge sampling against dense re-implementations of
FREEDOM's definitions (docs/method.md); the tiny end-to-end runs (as a model and as EGRA's backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from egra.data.interactions import TEST, TRAIN
from egra.graphs import modality_graphs
from egra.metrics.popularity import mostpop_metrics
from egra.models import FREEDOM
from egra.models.freedom import mix_item_graphs, sample_edges
from egra.pipeline import pretrain
from egra.pipeline.fit import build_net
from egra.pipeline.graph import GraphSpec, build_graphs, constructor_config
from egra.pipeline.train import run
from egra.training.module import epoch_rng

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
        "modality_graphs": modality_graphs(features, K, preset="freedom", device="cpu"),
    }


def make(data, **kw) -> FREEDOM:
    torch.manual_seed(0)
    kw.setdefault("embedding_dim", 8)
    return FREEDOM(**data, **kw)


def batch(seed: int = 1, size: int = 9):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, N_USERS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
    )


def perturb(model: FREEDOM) -> None:
    """Every parameter moved off its initial value (biases, features)."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------- dense references
def dense_binary_knn(x: np.ndarray, k: int) -> np.ndarray:
    """FREEDOM's S_m: dense cosine, top-k per row incl. self, binary, D^{-1/2} A D^{-1/2} with row sums."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    a = np.zeros_like(sim)
    for i in range(sim.shape[0]):
        a[i, np.argsort(-sim[i])[:k]] = 1.0
    r = a.sum(1)
    d = 1.0 / np.sqrt(r)
    return d[:, None] * a * d[None, :]


def dense_item_graph(features: dict, k: int, w_v: float) -> np.ndarray:
    s = {m: dense_binary_knn(x.astype(np.float64), k) for m, x in features.items()}
    return w_v * s["image"] + (1 - w_v) * s["text"] if len(s) == 2 else next(iter(s.values()))


def dense_norm_adj(r: np.ndarray) -> np.ndarray:
    nu, ni = r.shape
    a = np.zeros((nu + ni, nu + ni))
    a[:nu, nu:] = r
    a[nu:, :nu] = r.T
    deg = a.sum(1)
    d = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return d[:, None] * a * d[None, :]


def dense_forward(model: FREEDOM, r: np.ndarray, s: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u_g, i_g + h)`` with dense float64 matrices: ``r`` the user-item graph, ``s`` the item graph."""
    a = torch.from_numpy(dense_norm_adj(r))
    x = torch.cat([model.user_emb, model.item_emb]).detach().double()
    layers = [x]
    for _ in range(model.n_ui_layers):
        x = a @ x
        layers.append(x)
    z = torch.stack(layers).mean(0)
    h = model.item_emb.detach().double()
    for _ in range(model.n_mm_layers):
        h = torch.from_numpy(s) @ h
    return z[:N_USERS], z[N_USERS:] + h


def dense_r(users, items) -> np.ndarray:
    r = np.zeros((N_USERS, N_ITEMS))
    r[users, items] = 1.0
    return r


# ----------------------------------------------------------------------- model
def test_defaults_and_shapes(data):
    m = FREEDOM(**data)
    assert (m.embedding_dim, m.n_ui_layers, m.n_mm_layers) == (64, 2, 1)
    assert (m.mm_image_weight, m.dropout, m.reg_weight, m.train_features) == (0.1, 0.8, 1e-4, True)
    assert m.modalities == ("image", "text")
    u, i = make(data).embeddings()
    assert u.shape == (N_USERS, 8) and i.shape == (N_ITEMS, 8)
    # graphs are not checkpointed, the trainable features are
    keys = make(data).state_dict().keys()
    assert not any(k.startswith(("full_adj", "train_adj", "item_graph")) for k in keys)
    assert {"feat_image", "feat_text", "user_emb", "item_emb"} <= set(keys)


@pytest.mark.parametrize("w_v", [0.1, 0.7])
def test_item_graph_is_binary_rowsum_normalised_and_mixed(data, w_v):
    for m in ("image", "text"):
        got = data["modality_graphs"][m].toarray()
        np.testing.assert_allclose(
            got, dense_binary_knn(data["features"][m].astype(np.float64), K), atol=1e-7
        )
        assert ((got != 0).sum(1) == K).all() and np.allclose(got[got != 0], 1.0 / K)  # each edge 1/k
        assert (np.diag(got) > 0).all()  # the item itself is among its k
    model = make(data, mm_image_weight=w_v)
    np.testing.assert_allclose(
        model.item_graph.a.to_dense().numpy(), dense_item_graph(data["features"], K, w_v), atol=1e-7
    )
    only_text = {"text": data["modality_graphs"]["text"]}
    np.testing.assert_array_equal(mix_item_graphs(only_text, w_v).toarray(), only_text["text"].toarray())
    with pytest.raises(ValueError, match="unknown modality graph preset 'egra_pt'"):
        modality_graphs(data["features"], K, preset="egra_pt", device="cpu")
    with pytest.raises(ValueError, match="two of which one is 'image'"):
        mix_item_graphs({"a": only_text["text"], "b": only_text["text"]}, w_v)


@pytest.mark.parametrize("n_mm_layers", [1, 2])
def test_forward_matches_dense_reimplementation_full_graph(data, n_mm_layers):
    model = make(data, n_mm_layers=n_mm_layers)
    perturb(model)
    model.eval()
    u, i = model.embeddings()
    ref_u, ref_i = dense_forward(
        model, dense_r(data["train_users"], data["train_items"]), dense_item_graph(data["features"], K, 0.1)
    )
    torch.testing.assert_close(u.double(), ref_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(i.double(), ref_i, atol=1e-5, rtol=1e-5)
    # export / representations: the same vectors, detached, in eval mode
    model.train()
    eu, ei = model.export()
    torch.testing.assert_close(ei.double(), ref_i, atol=1e-5, rtol=1e-5)
    ru, ri = model.representations("fused")
    torch.testing.assert_close(ri, ei)
    _, ri_id = model.representations("id")
    torch.testing.assert_close(ri_id, ei - model.item_graph_view().detach())
    assert model.training and not ri.requires_grad


def test_forward_matches_dense_reimplementation_masked_graph(data):
    model = make(data)
    perturb(model)
    n_edges = len(model.edge_weights)
    keep = np.sort(np.random.default_rng(5).choice(n_edges, size=n_edges // 3, replace=False))
    model.set_train_edges(keep)
    r_kept = dense_r(model.edge_users[keep], model.edge_items[keep])
    s = dense_item_graph(data["features"], K, 0.1)
    u, i = model.embeddings()  # training mode: the masked graph
    ref_u, ref_i = dense_forward(model, r_kept, s)
    torch.testing.assert_close(u.double(), ref_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(i.double(), ref_i, atol=1e-5, rtol=1e-5)
    # the kept graph is normalised again, on its own degrees
    np.testing.assert_allclose(model.masked_adjacency(keep).toarray(), dense_norm_adj(r_kept), atol=1e-7)
    # eval mode: the full graph
    model.eval()
    full_u, _ = model.embeddings()
    ref_full_u, _ = dense_forward(model, dense_r(data["train_users"], data["train_items"]), s)
    torch.testing.assert_close(full_u.double(), ref_full_u, atol=1e-5, rtol=1e-5)


def test_loss_components_and_batch_rows(data):
    model = make(data, reg_weight=0.3)
    perturb(model)
    model.on_train_epoch_start(0, epoch_rng(999, 0))
    users, pos, neg = batch(size=11)
    out = model.loss(users, pos, neg)
    assert set(out) == {"loss", "bpr", "reg", "bpr_image", "bpr_text"}
    u_g, z_i = model.embeddings()  # the same (masked) graph, all rows

    def bpr(u, p, n):
        return -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()

    want_bpr = bpr(u_g[users], z_i[pos], z_i[neg])
    feats = {m: model.feature(m) @ model.proj[m].weight.T + model.proj[m].bias for m in model.modalities}
    terms = {m: bpr(u_g[users], f[pos], f[neg]) for m, f in feats.items()}
    want = want_bpr + 0.3 * (terms["image"] + terms["text"])
    torch.testing.assert_close(out["bpr"], want_bpr.detach())
    for m in model.modalities:
        torch.testing.assert_close(out[f"bpr_{m}"], terms[m].detach())
    torch.testing.assert_close(out["loss"], want)
    got = torch.autograd.grad(out["loss"], list(model.parameters()))
    ref = torch.autograd.grad(want, list(model.parameters()))
    for (name, _), g1, g2 in zip(model.named_parameters(), got, ref):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("masked", [False, True])
def test_every_parameter_gets_a_gradient(data, masked):
    model = make(data, reg_weight=0.5)
    names = {n for n, _ in model.named_parameters()}
    assert {"feat_image", "feat_text", "user_emb", "item_emb", "proj.image.weight", "proj.text.bias"} <= names
    if masked:
        model.on_train_epoch_start(3, epoch_rng(0, 3))
    model.loss(*batch(size=40))["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_features_are_buffers(data):
    model = make(data, train_features=False)
    assert not any(n.startswith("feat_") for n, _ in model.named_parameters())
    assert not any(k.startswith("feat_") for k in model.state_dict())
    model.loss(*batch())["loss"].backward()
    assert model.proj["text"].weight.grad.abs().sum() > 0


def test_single_modality(data):
    one = {**data, "features": {"text": data["features"]["text"]}}
    model = make(one)
    assert model.modalities == ("text",)
    assert set(model.loss(*batch())) == {"loss", "bpr", "reg", "bpr_text"}
    model.eval()
    _, i = model.embeddings()
    _, ref_i = dense_forward(
        model,
        dense_r(data["train_users"], data["train_items"]),
        dense_item_graph({"text": data["features"]["text"]}, K, 0.1),
    )
    torch.testing.assert_close(i.double(), ref_i, atol=1e-5, rtol=1e-5)


def test_bad_inputs(data):
    base = {k: v for k, v in data.items() if k != "features"}
    with pytest.raises(ValueError, match="at least one modality"):
        FREEDOM(**base, features={})
    with pytest.raises(ValueError, match=r"no kNN graph S_m for modalities \['text'\]"):
        FREEDOM(**{**data, "modality_graphs": {"image": data["modality_graphs"]["image"]}})
    with pytest.raises(ValueError, match="dropout"):
        FREEDOM(**data, dropout=1.0)


# ------------------------------------------------------------- edge sampling
def _skewed_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A graph with very unequal degrees (1 to 10): user u rated items 0..2^u - 1 (u < 4),
    user 4 all 10 items, user 5 item 9 alone. Weights 1/sqrt(d_u d_i) from 0.16 to 0.71."""
    pairs = [(u, i) for u in range(4) for i in range(2**u)] + [(4, i) for i in range(10)] + [(5, 9)]
    users, items = (np.array(c) for c in zip(*pairs))
    du, di = np.bincount(users), np.bincount(items)
    return users, items, 1.0 / np.sqrt(du[users] * di[items])


def test_sampling_follows_the_without_replacement_law():
    users, items, w = _skewed_weights()
    n_keep, draws = 6, 6000
    p = w / w.sum()
    # inclusion probabilities of successive sampling, estimated with numpy's own sampler
    ref_rng = np.random.default_rng(123)
    ref = np.zeros(len(w))
    for _ in range(draws):
        ref[ref_rng.choice(len(w), size=n_keep, replace=False, p=p)] += 1
    ref /= draws
    rng = np.random.default_rng(7)
    freq = np.zeros(len(w))
    for _ in range(draws):
        keep = sample_edges(w, n_keep, rng)
        assert len(keep) == n_keep and len(np.unique(keep)) == n_keep and (np.diff(keep) > 0).all()
        freq[keep] += 1
    freq /= draws
    se = np.sqrt(ref * (1 - ref) / draws) * np.sqrt(2)
    assert np.all(np.abs(freq - ref) < 5 * se + 1e-3), np.c_[freq, ref]
    assert np.corrcoef(freq, w)[0, 1] > 0.95
    # the law is far from uniform here: a uniform sampler (n_keep / n for every edge) fails
    uniform = np.full(len(w), n_keep / len(w))
    assert np.max(np.abs(uniform - ref) - 5 * se) > 0.1
    # the heaviest edges (the users and items with one interaction) are kept most often
    assert freq[np.argmax(w)] > 0.9 * freq.max() and freq[np.argmax(w)] > 2 * freq[np.argmin(w)]


def test_model_resamples_each_epoch_deterministically():
    users, items, _ = _skewed_weights()
    rng = np.random.default_rng(0)
    feats = {"text": rng.normal(size=(10, 4)).astype(np.float32)}
    model = FREEDOM(
        n_users=6,
        n_items=10,
        train_users=users,
        train_items=items,
        features=feats,
        modality_graphs=modality_graphs(feats, 3, preset="freedom", device="cpu"),
        embedding_dim=4,
        dropout=0.8,
    )
    n = len(model.edge_weights)
    assert n == 26 and model.n_keep == 5  # ⌊26 · 0.2⌋
    kept = {}
    for epoch in (0, 1, 0):
        model.on_train_epoch_start(epoch, epoch_rng(999, epoch))
        kept.setdefault(epoch, []).append(model.kept_edges.copy())
        assert len(model.kept_edges) == model.n_keep
        # the training graph is the kept edges' normalised graph
        a = model.train_adj.a.to_dense().numpy()
        r = dense_r_small(model.edge_users[model.kept_edges], model.edge_items[model.kept_edges], 6, 10)
        np.testing.assert_allclose(a, dense_norm_adj(r), atol=1e-7)
    np.testing.assert_array_equal(kept[0][0], kept[0][1])  # a pure function of (seed, epoch)
    draws = [tuple(model.sample_train_edges(epoch_rng(999, e))) for e in range(20)]
    assert len(set(draws)) > 1
    # the epoch stream differs from the BPR sampler's (default_rng([seed, epoch]))
    assert not np.array_equal(epoch_rng(999, 0).random(4), np.random.default_rng([999, 0]).random(4))
    model.eval()
    assert model.adjacency() is model.full_adj
    zero = FREEDOM(**{**model_kwargs(model, feats), "dropout": 0.0})
    zero.on_train_epoch_start(0, epoch_rng(0, 0))
    assert zero.train_adj is zero.full_adj


def dense_r_small(users, items, nu, ni) -> np.ndarray:
    r = np.zeros((nu, ni))
    r[users, items] = 1.0
    return r


def model_kwargs(model: FREEDOM, feats) -> dict:
    return {
        "n_users": model.n_users,
        "n_items": model.n_items,
        "train_users": model.edge_users,
        "train_items": model.edge_items,
        "features": feats,
        "modality_graphs": modality_graphs(feats, 3, preset="freedom", device="cpu"),
        "embedding_dim": 4,
    }


# ------------------------------------------------------------- graph stage
def test_graph_stage_builds_freedoms_graph(tmp_path):
    from tests.conftest import make_cfg

    cfg = make_cfg(tmp_path, ["model=freedom", "model.knn_k=5"])
    dm = instantiate(cfg.data)
    dm.setup()
    graphs = build_graphs(cfg, dm, GraphSpec.of(cfg.model))
    feats = dm.data.features
    for m in ("image", "text"):
        np.testing.assert_allclose(
            graphs.modality[m].toarray(), dense_binary_knn(feats[m].astype(np.float64), 5), atol=1e-6
        )
    net = build_net(constructor_config(cfg.model), dm, graphs.model_inputs())
    np.testing.assert_allclose(
        net.item_graph.a.to_dense().numpy(), dense_item_graph(feats, 5, 0.1), atol=1e-6
    )
    # MGCN's graph of the same k is another artifact (weighted), FREEDOM's is reused
    mgcn_cfg = make_cfg(tmp_path, ["model=mgcn", "model.knn_k=5"])
    mgcn = build_graphs(mgcn_cfg, dm, GraphSpec.of(mgcn_cfg.model))
    assert set(mgcn.artifacts.values()).isdisjoint(graphs.artifacts.values())
    assert not np.allclose(mgcn.modality["text"].toarray(), graphs.modality["text"].toarray())
    again = build_graphs(cfg, dm, GraphSpec.of(cfg.model))
    assert again.artifacts == graphs.artifacts


# ------------------------------------------------------------- end to end
def test_tiny_end_to_end_learns(cfg_factory):
    metrics = run(cfg_factory(["experiment=freedom_tiny"]))
    cfg = cfg_factory(["experiment=freedom_tiny"], sub="d")
    dm = instantiate(cfg.data)
    dm.setup()
    d = dm.data
    mostpop = mostpop_metrics(*d.pairs(TRAIN), *d.pairs(TEST), d.n_items)["Recall@20"]
    chance = 20 / d.n_items  # a random score's expected Recall@20 (at most, with masking)
    print(f"FREEDOM tiny test Recall@20 {metrics['test/Recall@20']:.4f}, MostPop {mostpop:.4f}")
    assert metrics["status"] == "ok"
    assert metrics["test/Recall@20"] > 1.4 * mostpop, (metrics["test/Recall@20"], mostpop)
    assert metrics["test/Recall@20"] > chance + 0.1


def test_freedom_backbone_pretrain_then_egra_graph_source(cfg_factory):
    """``egra-pretrain backbone=freedom`` writes the artifact that ``model.graph_source=freedom``
    then builds S^pt from (reused: same key)."""
    short = ["backbones.freedom.max_epochs=2"]
    art = pretrain.run(cfg_factory(["backbone=freedom", *short], config_name="pretrain"))
    assert art.manifest["backbone"] == "freedom" and not art.reused
    items = art.array("items")
    assert items.shape[1] == 64 and np.isfinite(items).all()
    metrics = run(
        cfg_factory(["experiment=egra_tiny", "model.graph_source=freedom", *short, "trainer.max_epochs=2"])
    )
    assert metrics["graph_source"] == "freedom"
    assert metrics["pretrain_reused"] is True and Path(metrics["pretrain_artifact"]) == art.path
    assert metrics["graph_nnz"] > 0 and "backbone/test/Recall@20" in metrics
    written = json.loads((Path(art.path) / "manifest.json").read_text())
    assert written["config"]["model"]["_target_"] == "egra.models.FREEDOM"


def test_resume_matches_uninterrupted(cfg_factory):
    """The epoch's denoised graph is drawn from (seed, epoch), not from state a kill loses:
    killed after 2 of 4 epochs and resumed, the run ends exactly where an uninterrupted one does."""
    from tests.test_resume import _assert_same, _interrupt_and_resume

    full, resumed = _interrupt_and_resume(cfg_factory, ["experiment=freedom_tiny", "trainer.max_epochs=4"])
    _assert_same(full, resumed)


def test_tune_freedom_composes(tmp_path):
    from tests.test_sweep import _compose

    cfg = _compose(["experiment=freedom_tiny", "hparams_search=tune_freedom"], tmp_path)
    assert cfg.model._target_ == "egra.models.FREEDOM" and cfg.task_name == "tune_freedom"
    assert set(cfg.hydra.sweeper.params) == {"model.dropout", "model.reg_weight"}
