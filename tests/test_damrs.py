"""DA-MRS: its fixed graphs (denoised modality kNN graphs, co-interaction graph) against dense
and hand-computed references, built by the graph stage as artifacts; forward and losses against
a dense re-implementation of the method (module docstring of ``egra.models.damrs``); its
published defaults; the tiny end-to-end runs (as a model and as EGRA's backbone)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from egra.data.interactions import TEST, TRAIN
from egra.graphs import consistent_knn_graphs, cooccurrence_counts, cooccurrence_graph
from egra.metrics.popularity import mostpop_metrics
from egra.models import DAMRS
from egra.models.damrs import BEHAVIOR, behavior_adjacency
from egra.pipeline.fit import build_net
from egra.pipeline.graph import GraphSpec, build_graphs
from egra.pipeline.train import run
from tests.conftest import CONF_DIR, make_cfg

N_USERS, N_ITEMS, K = 14, 17, 4

pytestmark = pytest.mark.usefixtures("one_thread")

#: MMRec's configs/model/DAMRS.yaml (= the authors' src/configs/model/LightGCN.yaml); tau and
#: n_pseudo_pos are fixed in their model file; the behaviour graph's top-k from their README
#: (build_iib_graph.py --topk=2, item_graph_dict_2.npy), its threshold from build_iib_graph.py.
PUBLISHED = {
    "embedding_dim": 64,
    "n_ui_layers": 2,
    "n_mm_layers": 1,
    "kl_weight": 1.0,
    "neighbor_weight": 1e-3,
    "tau": 0.2,
    "n_pseudo_pos": 10,
    "behavior_weighted": False,
}
PUBLISHED_GRAPHS = {"knn_k": 10, "knn_convention": "damrs", "cooc_k": 2, "cooc_min_count": 2}


def interactions(seed: int = 0, n: int = 70):
    rng = np.random.default_rng(seed)
    return rng.integers(0, N_USERS - 1, size=n), rng.integers(0, N_ITEMS - 1, size=n)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    users, items = interactions()
    features = {
        "image": rng.normal(size=(N_ITEMS, 20)).astype(np.float32),
        "text": rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
    }
    return {
        "n_users": N_USERS,
        "n_items": N_ITEMS,
        "train_users": users,
        "train_items": items,
        "features": features,
        "modality_graphs": consistent_knn_graphs(features, K),
        "behavior_graph": cooccurrence_graph(users, items, N_ITEMS, k=3, min_count=1),
    }


def make(data, **kw) -> DAMRS:
    torch.manual_seed(0)
    kw.setdefault("embedding_dim", 8)
    kw.setdefault("n_pseudo_pos", 3)
    return DAMRS(**data, **kw)


def batch(seed: int = 1, size: int = 9):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, N_USERS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
    )


def perturb(model: DAMRS) -> None:
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------- dense references
def sym_norm(a: np.ndarray) -> np.ndarray:
    r = a.sum(1)
    d = np.where(r > 0, 1.0 / np.sqrt(np.where(r > 0, r, 1.0)), 0.0)
    return d[:, None] * a * d[None, :]


def dense_consistent_graphs(features: dict, k: int) -> dict[str, np.ndarray]:
    """Dense cosine per modality; a pair is a candidate when every modality's cosine is at
    least that modality's mean over all N² pairs; top-min(k, #candidates) per row, binary."""
    sims = {}
    for m, x in features.items():
        x = x.astype(np.float64)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims[m] = xn @ xn.T
    keep = np.logical_and.reduce([s >= s.mean() for s in sims.values()])
    out = {}
    for m, s in sims.items():
        a = np.zeros_like(s)
        for i in range(len(s)):
            cand = np.flatnonzero(keep[i])
            a[i, cand[np.argsort(-s[i, cand])][:k]] = 1.0
        out[m] = sym_norm(a)
    return out


def dense_cooccurrence(users, items, n_items, k, min_count) -> np.ndarray:
    """Brute force: common users of every item pair, thresholded, k largest per row (ties: lower id)."""
    who = [set(users[items == i]) for i in range(n_items)]
    c = np.array([[len(who[i] & who[j]) if i != j else 0 for j in range(n_items)] for i in range(n_items)])
    c[c < min_count] = 0
    out = np.zeros_like(c)
    for i in range(n_items):
        order = sorted((-c[i, j], j) for j in range(n_items) if c[i, j] > 0)[:k]
        for _, j in order:
            out[i, j] = c[i, j]
    return out


def dense_r(model: DAMRS, data) -> np.ndarray:
    r = np.zeros((N_USERS, N_ITEMS))
    r[data["train_users"], data["train_items"]] = 1.0
    return r


def dense_adj(r: np.ndarray) -> np.ndarray:
    nu = r.shape[0]
    a = np.zeros((nu + r.shape[1],) * 2)
    a[:nu, nu:] = r
    a[nu:, :nu] = r.T
    return sym_norm(a)


def rownorm(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def dense_forward(model: DAMRS, data) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(u_g, i_g, {view: h_v})`` in float64 (with gradients to the model's parameters):
    graphs rebuilt densely from the raw inputs."""
    a = torch.from_numpy(dense_adj(dense_r(model, data)))
    x = torch.cat([model.user_emb, model.item_emb]).double()
    layers = [x]
    for _ in range(model.n_ui_layers):
        x = a @ x
        layers.append(x)
    z = torch.stack(layers).mean(0)
    graphs = {m: data["modality_graphs"][m].toarray().astype(np.float64) for m in model.modalities}
    b = (data["behavior_graph"].toarray() > 0).astype(float)
    graphs[BEHAVIOR] = sym_norm(b + np.eye(N_ITEMS))
    h = {}
    for v, g in graphs.items():
        hv = model.item_emb.double()
        for _ in range(model.n_mm_layers):
            hv = torch.from_numpy(g) @ hv
        h[v] = hv
    return z[:N_USERS], z[N_USERS:], h


def dense_loss(model: DAMRS, data, users, pos, neg) -> dict[str, torch.Tensor]:
    u_g, i_g, h = dense_forward(model, data)
    views = list(h)
    c = sum(h.values()) / len(views)
    items = i_g + c
    u = u_g[users]
    # denoised BPR, weights without gradient
    with torch.no_grad():
        p = torch.stack([torch.sigmoid((u * rownorm(h[v][pos])).sum(1)) for v in views])
        n = torch.stack([torch.sigmoid((u * rownorm(h[v][neg])).sum(1)) for v in views])
        pm, pv, pmax, nm = p.mean(0), p.var(0), p.max(0).values, n.mean()
        w_pos = torch.clamp(pm * torch.exp(-pv) ** 2, 0, 1)
        w_neg = torch.clamp((pmax - nm) * (pm < nm).double(), 0, 1)
    sp_, sn = (u * items[pos]).sum(1), (u * items[neg]).sum(1)
    bpr = -(torch.log(torch.sigmoid(sp_ - sn)) * w_pos + torch.log(torch.sigmoid(sn - sp_)) * w_neg).mean()
    # alignment guided by item relations, pseudo-labels by sorting
    ii = torch.unique(torch.cat([pos, neg]))
    with torch.no_grad():
        prob = {v: torch.softmax(rownorm(h[v][ii]) @ rownorm(h[v]).T, 1) for v in views}
    nd = []
    for v in views:
        with torch.no_grad():
            score = sum(prob[w] for w in views if w != v) + 2 * prob[v]
            multi = torch.argsort(score, dim=1, descending=True)[:, : model.n_pseudo_pos]
            rest = prob[v].clone()
            rest.scatter_(1, multi, 0)
            single = torch.argsort(rest, dim=1, descending=True)[:, : model.n_pseudo_pos]
        e = torch.exp(rownorm(h[v][ii]) @ rownorm(h[v]).T / model.tau)
        tot, ms, ss = e.sum(1), e.gather(1, multi).sum(1), e.gather(1, single).sum(1)
        nd.append(torch.mean(-torch.log(ms / tot + 1e-9) - torch.log(ss / (tot - ms) + 1e-9)))
    ai = sum(nd) / len(nd)
    # alignment guided by user preference: the two Bernoulli KLs written out
    uu = torch.unique(users)
    pg = torch.sigmoid(u_g[uu] @ rownorm(i_g[ii]).T)
    pt = torch.sigmoid(u_g[uu] @ rownorm(c[ii]).T)

    def kl(a, b):
        return a * torch.log(a) - a * torch.log(b) + (1 - a) * torch.log(1 - a) - (1 - a) * torch.log(1 - b)

    au = torch.mean(kl(pg, pt) + kl(pt, pg))
    total = bpr + model.neighbor_weight * ai + model.kl_weight * au
    return {"loss": total, "bpr": bpr, "ai": ai, "au": au, "w_pos": w_pos, "w_neg": w_neg}


# ----------------------------------------------------------------------- graphs
def test_cooccurrence_graph_on_a_hand_computed_example():
    # users: 0 -> {0,1,2}, 1 -> {0,1,3}, 2 -> {0,1,2}, 3 -> {2,3}, 4 -> {3,4} (and a repeat)
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4])
    items = np.array([0, 1, 2, 0, 1, 3, 0, 1, 2, 2, 3, 3, 4, 4])
    counts = cooccurrence_counts(users, items, 5).toarray()
    want = np.array(
        [
            [0, 3, 2, 1, 0],
            [3, 0, 2, 1, 0],
            [2, 2, 0, 1, 0],
            [1, 1, 1, 0, 1],
            [0, 0, 0, 1, 0],
        ]
    )
    np.testing.assert_array_equal(counts, want)
    # at least 2 common users: 0-1 (3), 0-2 (2), 1-2 (2); item 2's tie goes to the lower id
    np.testing.assert_array_equal(
        cooccurrence_graph(users, items, 5, k=1).toarray(),
        [[0, 3, 0, 0, 0], [3, 0, 0, 0, 0], [2, 0, 0, 0, 0], [0] * 5, [0] * 5],
    )
    np.testing.assert_array_equal(
        cooccurrence_graph(users, items, 5, k=2).toarray(),
        [[0, 3, 2, 0, 0], [3, 0, 2, 0, 0], [2, 2, 0, 0, 0], [0] * 5, [0] * 5],
    )
    # min_count=1 keeps the single shared users too (item 3 then links to 0, 1 with the lower ids)
    np.testing.assert_array_equal(
        cooccurrence_graph(users, items, 5, k=2, min_count=1).toarray()[3], [1, 1, 0, 0, 0]
    )


@pytest.mark.parametrize("k,min_count", [(1, 1), (2, 2), (5, 1), (3, 3)])
def test_cooccurrence_graph_matches_brute_force(k, min_count):
    users, items = interactions(seed=4, n=120)
    got = cooccurrence_graph(users, items, N_ITEMS, k=k, min_count=min_count)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.toarray(), dense_cooccurrence(users, items, N_ITEMS, k, min_count))


def test_consistent_graphs_match_dense_reference_and_drop_one_modality_pairs(data):
    feats = data["features"]
    got = consistent_knn_graphs(feats, K, chunk_size=5)  # several chunks
    ref = dense_consistent_graphs(feats, K)
    for m in ("image", "text"):
        np.testing.assert_allclose(got[m].toarray(), ref[m], atol=1e-6)
        assert (got[m].diagonal() > 0).all()  # the item itself: cosine 1, always a candidate
    # Both graphs have the same rows' edge counts (same candidates), not the same edges.
    a, b = (got[m].toarray() > 0 for m in ("image", "text"))
    np.testing.assert_array_equal(a.sum(1), b.sum(1))
    assert (a != b).any()
    # Items 0 and 1 alike in the image but opposite in the text: no edge in either graph.
    x = {
        "image": np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]),
        "text": np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]),
    }
    pair = consistent_knn_graphs(x, 2)
    for m in x:
        assert pair[m][0, 1] == 0 and pair[m][1, 0] == 0
    alone = consistent_knn_graphs({"image": x["image"]}, 2)["image"].toarray()
    assert alone[0, 1] > 0  # the image alone does link them


def test_graph_stage_builds_damrs_graphs_as_artifacts(tmp_path):
    cfg = make_cfg(tmp_path, ["model=damrs", "graph.knn_k=5", "graph.cooc_k=3"])
    dm = instantiate(cfg.data)
    dm.setup()
    spec = GraphSpec.of(cfg.graph, cfg.model)
    graphs = build_graphs(cfg, dm, spec)
    feats = dm.data.features
    ref = dense_consistent_graphs(feats, 5)
    for m in ("image", "text"):
        np.testing.assert_allclose(graphs.modality[m].toarray(), ref[m], atol=1e-6)
    users, items = dm.data.pairs(TRAIN)
    np.testing.assert_array_equal(
        graphs.behavior.toarray(), dense_cooccurrence(users, items, dm.data.n_items, 3, 2)
    )
    assert set(graphs.artifacts) == {"S^m/image", "S^m/text", "S^b"}
    assert set(graphs.names()) == {"S^m/image", "S^m/text", "S^b"}
    # The model gets exactly these graphs.
    net = build_net(cfg.model, dm, graphs.model_inputs())
    np.testing.assert_allclose(net.item_graphs["text"].a.to_dense().numpy(), ref["text"], atol=1e-6)
    np.testing.assert_allclose(
        net.item_graphs[BEHAVIOR].a.to_dense().numpy(),
        sym_norm((graphs.behavior.toarray() > 0) + np.eye(dm.data.n_items)),
        atol=1e-6,
    )
    # Cached by content: the same config reuses them; another k or convention is another artifact.
    assert build_graphs(cfg, dm, spec).artifacts == graphs.artifacts
    other = make_cfg(
        tmp_path, ["model=damrs", "graph.knn_k=5", "graph.cooc_k=2", "graph.knn_convention=freedom"]
    )
    again = build_graphs(other, dm, GraphSpec.of(other.graph, other.model))
    assert set(again.artifacts.values()).isdisjoint(graphs.artifacts.values())
    # freedom's convention: the graphs without the cross-modal denoising (the authors' IIG ablation)
    assert again.modality["image"].nnz == 5 * dm.data.n_items
    assert graphs.modality["image"].nnz < again.modality["image"].nnz


def test_behavior_adjacency_adds_self_loops_binary_or_weighted():
    g = sp.csr_matrix(np.array([[0, 3, 2], [3, 0, 0], [2, 0, 0]], dtype=np.float32))
    binary = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1]], dtype=float)
    np.testing.assert_allclose(behavior_adjacency(g).toarray(), sym_norm(binary), atol=1e-7)
    weighted = np.array([[1, 3, 2], [3, 1, 0], [2, 0, 1]], dtype=float)
    np.testing.assert_allclose(behavior_adjacency(g, weighted=True).toarray(), sym_norm(weighted), atol=1e-7)


# ----------------------------------------------------------------------- model
def test_published_defaults_are_the_constructors_and_the_configs():
    params = inspect.signature(DAMRS.__init__).parameters
    conf = OmegaConf.load(Path(CONF_DIR) / "model" / "damrs.yaml")
    for key, value in PUBLISHED.items():
        assert params[key].default == value, key
        assert conf[key] == value, key
    graphs = OmegaConf.load(Path(CONF_DIR) / "graph" / "model" / "damrs.yaml")
    for key, value in PUBLISHED_GRAPHS.items():  # the graph stage's keys
        assert graphs[key] == value, key
    assert conf._target_ == "egra.models.DAMRS"


@pytest.mark.parametrize("n_mm_layers", [1, 2])
def test_forward_matches_dense_reimplementation(data, n_mm_layers):
    model = make(data, n_mm_layers=n_mm_layers)
    perturb(model)
    assert model.views == ("image", "text", BEHAVIOR)
    u, i = model.embeddings()
    with torch.no_grad():
        u_g, i_g, h = dense_forward(model, data)
    c = sum(h.values()) / 3
    torch.testing.assert_close(u.double(), u_g, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(i.double(), i_g + c, atol=1e-6, rtol=1e-5)
    ru, ri = model.representations("fused")
    torch.testing.assert_close(ri, i.detach())
    _, ri_id = model.representations("id")
    torch.testing.assert_close(ri_id.double(), i_g, atol=1e-6, rtol=1e-5)
    assert set(model.state_dict()) == {"user_emb", "item_emb"}  # graphs are not checkpointed


def test_loss_matches_dense_reimplementation(data):
    model = make(data, kl_weight=0.7, neighbor_weight=0.3)
    perturb(model)
    users, pos, neg = batch(size=12)
    out = model.loss(users, pos, neg)
    assert set(out) == {"loss", "bpr", "ai", "au", "denoise/w_pos", "denoise/w_neg"}
    ref = dense_loss(model, data, users, pos, neg)
    u_g, _ = model.behavior_view()
    w_pos, w_neg = model.feedback_weights(u_g[users], pos, neg, model.item_views())
    torch.testing.assert_close(w_pos.double(), ref["w_pos"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_neg.double(), ref["w_neg"], atol=1e-6, rtol=1e-5)
    assert (ref["w_neg"] > 0).any() and (ref["w_neg"] == 0).any()  # both branches are exercised
    torch.testing.assert_close(out["bpr"].double(), ref["bpr"].detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["ai"].double(), 0.3 * ref["ai"].detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["au"].double(), 0.7 * ref["au"].detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["loss"].double(), ref["loss"].detach(), atol=1e-6, rtol=1e-5)
    # the gradient of the whole loss is the reference's (weights and pseudo-labels held fixed)
    params = list(model.parameters())
    got = torch.autograd.grad(out["loss"], params)
    want = torch.autograd.grad(ref["loss"], params)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4, msg=name)


def test_every_parameter_gets_a_gradient(data):
    model = make(data)
    model.loss(*batch(size=40))["loss"].backward()
    assert {n for n, _ in model.named_parameters()} == {"user_emb", "item_emb"}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_inputs(data):
    with pytest.raises(ValueError, match="behavior_graph"):
        DAMRS(**{**data, "behavior_graph": None})
    with pytest.raises(ValueError, match=r"no item graph for modalities \['text'\]"):
        DAMRS(**{**data, "modality_graphs": {"image": data["modality_graphs"]["image"]}})
    with pytest.raises(ValueError, match="may not be called 'behavior'"):
        DAMRS(**data, modalities=["behavior"])


# ------------------------------------------------------------- end to end
def test_tiny_end_to_end_beats_mostpop(cfg_factory):
    """``egra-train data=synthetic data.preset=tiny model=damrs`` with the published defaults."""
    metrics = run(cfg_factory(["model=damrs"]))
    cfg = cfg_factory(["model=damrs"], sub="d")
    dm = instantiate(cfg.data)
    dm.setup()
    d = dm.data
    mostpop = mostpop_metrics(*d.pairs(TRAIN), *d.pairs(TEST), d.n_items)["Recall@20"]
    print(f"DA-MRS tiny test Recall@20 {metrics['test/Recall@20']:.4f}, MostPop {mostpop:.4f}")
    assert metrics["status"] == "ok" and metrics["model"] == "DAMRS"
    assert metrics["test/Recall@20"] > 1.3 * mostpop, (metrics["test/Recall@20"], mostpop)


def test_damrs_as_egra_backbone(cfg_factory):
    """``model=egra graph.graph_source=damrs``: DA-MRS (with its own graphs) trained as the backbone."""
    metrics = run(
        cfg_factory(
            [
                "experiment=egra_tiny",
                "graph.graph_source=damrs",
                "backbones.damrs.max_epochs=2",
                "trainer.max_epochs=2",
            ]
        )
    )
    assert metrics["status"] == "ok" and metrics["graph_source"] == "damrs"
    assert metrics["pretrain_reused"] is False and metrics["graph_nnz"] > 0
    assert "backbone/test/Recall@20" in metrics


def test_tune_damrs_composes(tmp_path):
    from tests.test_sweep import _compose

    cfg = _compose(["model=damrs", "data.preset=tiny", "hparams_search=tune_damrs"], tmp_path)
    assert cfg.model._target_ == "egra.models.DAMRS" and cfg.task_name == "tune_damrs"
    assert set(cfg.hydra.sweeper.params) == {
        f"model.{k}" for k in ("kl_weight", "neighbor_weight", "n_ui_layers", "n_mm_layers")
    } | {"graph.knn_k"}
