"""LGMRec: forward, hyperedge assignments and loss against dense re-implementations of the
method (module docstring of ``egra.models.lgmrec``); its published defaults; the tiny
end-to-end runs (as a model and as EGRA's backbone)."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from egra.data.interactions import TEST, TRAIN
from egra.metrics.popularity import mostpop_metrics
from egra.models import LGMRec
from egra.pipeline.train import run
from tests.conftest import CONF_DIR

N_USERS, N_ITEMS = 14, 17

pytestmark = pytest.mark.usefixtures("one_thread")

#: MMRec's configs/model/LGMRec.yaml (the Baby block; tau is fixed at 0.2 in the model file).
PUBLISHED = {
    "embedding_dim": 64,
    "n_ui_layers": 2,
    "n_mm_layers": 2,
    "n_hyper_layers": 1,
    "hyper_num": 4,
    "keep_rate": 0.5,
    "alpha": 0.3,
    "cl_weight": 1e-4,
    "reg_weight": 1e-6,
    "tau": 0.2,
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    users = rng.integers(0, N_USERS - 1, size=60)  # the last user has no train rows
    items = rng.integers(0, N_ITEMS - 1, size=60)  # nor does the last item
    return {
        "n_users": N_USERS,
        "n_items": N_ITEMS,
        "train_users": users,
        "train_items": items,
        "features": {
            "image": rng.normal(size=(N_ITEMS, 20)).astype(np.float32),
            "text": rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
        },
    }


def make(data, **kw) -> LGMRec:
    torch.manual_seed(0)
    kw.setdefault("embedding_dim", 8)
    kw.setdefault("hyper_num", 3)
    return LGMRec(**data, **kw)


def batch(seed: int = 1, size: int = 9):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, N_USERS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
    )


# --------------------------------------------------------------- dense reference
def dense_r(data) -> np.ndarray:
    r = np.zeros((N_USERS, N_ITEMS))
    r[data["train_users"], data["train_items"]] = 1.0
    return r


def dense_norm_adj(r: np.ndarray) -> np.ndarray:
    nu = r.shape[0]
    a = np.zeros((nu + r.shape[1],) * 2)
    a[:nu, nu:] = r
    a[nu:, :nu] = r.T
    deg = a.sum(1)
    d = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return d[:, None] * a * d[None, :]


def rownorm(x: torch.Tensor) -> torch.Tensor:
    n = x.norm(dim=1, keepdim=True)
    return x / torch.where(n > 0, n, torch.ones_like(n))


def t64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().double()


def dense_assignments(model: LGMRec, noise: dict | None = None) -> dict:
    """``softmax((Λ + g)/τ)`` per modality, ``g = 0`` or the given Gumbel draws."""
    r = torch.from_numpy(dense_r_model(model))
    out = {}
    for m in model.modalities:
        li = t64(model.feature(m)) @ t64(model.hyper[m])
        lu = r @ li
        gi, gu = noise[m] if noise else (0.0, 0.0)
        out[m] = (torch.softmax((li + gi) / model.tau, 1), torch.softmax((lu + gu) / model.tau, 1))
    return out


def dense_r_model(model: LGMRec) -> np.ndarray:
    return model.ui.a.to_dense().double().numpy()


def dense_forward(model: LGMRec, assign: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(E_c, E, {m: (g_users, g_items)})`` in float64 from dense matrices."""
    r = dense_r_model(model)
    a = torch.from_numpy(dense_norm_adj(r))
    rt = torch.from_numpy(r)
    x = torch.cat([t64(model.user_emb), t64(model.item_emb)])
    layers = [x]
    for _ in range(model.n_ui_layers):
        x = a @ x
        layers.append(x)
    e_c = torch.stack(layers).mean(0)
    deg = rt.sum(1, keepdim=True)
    local, glob, hyper = e_c.clone(), torch.zeros_like(e_c), {}
    for m in model.modalities:
        f = t64(model.feature(m)) @ t64(model.proj[m])
        z = torch.cat([torch.where(deg > 0, rt @ f / torch.where(deg > 0, deg, 1.0), 0.0), f])
        for _ in range(model.n_mm_layers):
            z = a @ z
        local = local + rownorm(z)
        hi, hu = (t64(x) for x in assign[m])
        e = e_c[N_USERS:]
        for _ in range(model.n_hyper_layers):
            lat = hi.T @ e
            e = hi @ lat
            gu = hu @ lat
        hyper[m] = (gu, e)
        glob = glob + torch.cat([gu, e])
    return e_c, local + model.alpha * rownorm(glob), hyper


def perturb(model: LGMRec) -> None:
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------- model
def test_published_defaults_are_the_constructors_and_the_configs():
    params = inspect.signature(LGMRec.__init__).parameters
    conf = OmegaConf.load(Path(CONF_DIR) / "model" / "lgmrec.yaml")
    for key, value in PUBLISHED.items():
        assert params[key].default == value, key
        assert conf[key] == value, key
    assert conf._target_ == "egra.models.LGMRec"
    # Sports and Clothing use the authors' own values for the hypergraph keys.
    sports = OmegaConf.load(Path(CONF_DIR) / "experiment" / "lgmrec_sports.yaml").model
    clothing = OmegaConf.load(Path(CONF_DIR) / "experiment" / "lgmrec_clothing.yaml").model
    assert dict(sports) == {"n_hyper_layers": 1, "hyper_num": 4, "keep_rate": 0.4, "alpha": 0.6}
    assert dict(clothing) == {"n_hyper_layers": 2, "hyper_num": 64, "keep_rate": 0.2, "alpha": 0.2}


def test_shapes_and_state(data):
    model = make(data)
    assert model.modalities == ("image", "text")
    u, i = model.embeddings()
    assert u.shape == (N_USERS, 8) and i.shape == (N_ITEMS, 8)
    keys = set(model.state_dict())
    assert keys == {"user_emb", "item_emb", "proj.image", "proj.text", "hyper.image", "hyper.text"}
    assert model.proj["image"].shape == (20, 8) and model.hyper["text"].shape == (8, 3)


@pytest.mark.parametrize("layers", [(2, 2, 1), (1, 1, 2), (0, 3, 3)])
def test_eval_forward_matches_dense_reimplementation(data, layers):
    n_ui, n_mm, n_hyper = layers
    model = make(data, n_ui_layers=n_ui, n_mm_layers=n_mm, n_hyper_layers=n_hyper, alpha=0.7)
    perturb(model)
    model.eval()
    assign = model.assignments()
    ref_assign = dense_assignments(model)
    for m in model.modalities:
        for got, want in zip(assign[m], ref_assign[m]):
            torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
    u, i = model.embeddings()
    e_c, e, _ = dense_forward(model, ref_assign)
    torch.testing.assert_close(u.double(), e[:N_USERS], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(i.double(), e[N_USERS:], atol=1e-5, rtol=1e-5)
    # the backbone views, detached, from eval mode whatever the model's mode
    model.train()
    ru, ri = model.representations("fused")
    torch.testing.assert_close(ri.double(), e[N_USERS:], atol=1e-5, rtol=1e-5)
    _, ri_id = model.representations("id")
    torch.testing.assert_close(ri_id.double(), e_c[N_USERS:], atol=1e-5, rtol=1e-5)
    assert model.training and not ri.requires_grad
    eu, ei = model.export()
    torch.testing.assert_close(ei, ri)


def test_training_assignments_are_gumbel_softmax_then_dropout(data):
    model = make(data, keep_rate=1.0)
    perturb(model)
    model.train()
    torch.manual_seed(11)
    got = model.assignments()
    # The same draws by hand: per modality the items' Gumbel noise, then the users'.
    torch.manual_seed(11)
    noise = {}
    for m in model.modalities:
        li, lu = model.hyperedge_logits(m)
        noise[m] = tuple(-torch.empty_like(x).exponential_().log().double() for x in (li, lu))
    want = dense_assignments(model, noise)
    for m in model.modalities:
        for g, w in zip(got[m], want[m]):
            torch.testing.assert_close(g.double(), w, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(g.sum(1), torch.ones(g.shape[0]))  # soft assignments
    # Dropout with keep rate q, drawn after the noise: each entry is 0 or the same / q.
    model.keep_rate = 0.5
    torch.manual_seed(11)
    dropped = model.assignments()
    zeros = []
    for m in model.modalities:
        for d, g in zip(dropped[m], got[m]):
            kept = d != 0
            torch.testing.assert_close(d[kept], g[kept] / 0.5)
            zeros.append((~kept).float().mean().item())
    assert 0.2 < np.mean(zeros) < 0.8
    # Training draws differ from step to step; eval mode does not.
    assert not torch.allclose(model.embeddings()[1], model.embeddings()[1])
    model.eval()
    torch.testing.assert_close(model.embeddings()[1], model.embeddings()[1])


def test_loss_matches_dense_reimplementation(data):
    model = make(data, cl_weight=0.3, reg_weight=0.2)
    perturb(model)
    model.eval()  # noise-free assignments: the loss is deterministic
    users, pos, neg = batch(size=11)
    # repeated users and items: the distinct-row computation must weigh them by their counts
    assert len(users.unique()) < len(users) and len(pos.unique()) < len(pos)
    out = model.loss(users, pos, neg)
    assert set(out) == {"loss", "bpr", "hcl", "reg"}
    _, e, hyper = dense_forward(model, dense_assignments(model))
    u, i = e[:N_USERS], e[N_USERS:]
    d = (u[users] * i[pos]).sum(1) - (u[users] * i[neg]).sum(1)
    bpr = -torch.log(torch.sigmoid(d)).mean()

    def ssl(a, p, every):
        a, p, every = rownorm(a), rownorm(p), rownorm(every)
        pos_score = torch.exp((a * p).sum(1) / 0.2)
        total = torch.exp(a @ every.T / 0.2).sum(1)
        return -torch.log(pos_score / total).sum()

    (uv, iv), (ut, it) = hyper["image"], hyper["text"]
    hcl = ssl(uv[users], ut[users], ut) + ssl(iv[pos], it[pos], it)
    reg = (u[users].norm() + i[pos].norm() + i[neg].norm()) / len(users)
    torch.testing.assert_close(out["bpr"].double(), bpr, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["hcl"].double(), 0.3 * hcl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["reg"].double(), 0.2 * reg, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["loss"].double(), bpr + 0.3 * hcl + 0.2 * reg, atol=1e-5, rtol=1e-5)


def test_every_parameter_gets_a_gradient(data):
    model = make(data, cl_weight=0.5)
    model.train()
    torch.manual_seed(0)
    model.loss(*batch(size=40))["loss"].backward()
    names = {n for n, _ in model.named_parameters()}
    assert names == {"user_emb", "item_emb", "proj.image", "proj.text", "hyper.image", "hyper.text"}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_one_modality_has_no_contrastive_term_and_three_have_three_pairs(data):
    one = make({**data, "features": {"text": data["features"]["text"]}}, cl_weight=1.0)
    assert one.modalities == ("text",)
    assert one.loss(*batch())["hcl"] == 0
    one.eval()
    _, e, _ = dense_forward(one, dense_assignments(one))
    torch.testing.assert_close(one.embeddings()[1].double(), e[N_USERS:], atol=1e-5, rtol=1e-5)
    three = {
        **data["features"],
        "audio": np.random.default_rng(1).normal(size=(N_ITEMS, 5)).astype(np.float32),
    }
    model = make({**data, "features": three}, cl_weight=1.0)
    model.eval()
    users, pos, neg = batch()
    _, _, hyper = model.propagate()
    want = sum(
        model.hcl(hyper[a][0], hyper[b][0], users) + model.hcl(hyper[a][1], hyper[b][1], pos)
        for a, b in itertools.combinations(model.modalities, 2)
    )
    torch.testing.assert_close(model.loss(users, pos, neg)["hcl"], want.detach())


def test_bad_inputs(data):
    base = {k: v for k, v in data.items() if k != "features"}
    with pytest.raises(ValueError, match="at least one modality"):
        LGMRec(**base, features={})
    with pytest.raises(ValueError, match="keep_rate"):
        LGMRec(**data, keep_rate=0.0)
    with pytest.raises(ValueError, match=r"modalities \['audio'\] not in features"):
        LGMRec(**data, modalities=["audio"])


# ------------------------------------------------------------- end to end
def test_tiny_end_to_end_beats_mostpop(cfg_factory):
    """``egra-train data=synthetic data.preset=tiny model=lgmrec`` with the published defaults."""
    metrics = run(cfg_factory(["model=lgmrec"]))
    cfg = cfg_factory(["model=lgmrec"], sub="d")
    dm = instantiate(cfg.data)
    dm.setup()
    d = dm.data
    mostpop = mostpop_metrics(*d.pairs(TRAIN), *d.pairs(TEST), d.n_items)["Recall@20"]
    print(f"LGMRec tiny test Recall@20 {metrics['test/Recall@20']:.4f}, MostPop {mostpop:.4f}")
    assert metrics["status"] == "ok" and metrics["model"] == "LGMRec"
    assert metrics["test/Recall@20"] > 1.4 * mostpop, (metrics["test/Recall@20"], mostpop)


def test_lgmrec_as_egra_backbone(cfg_factory):
    """``model=egra graph.graph_source=lgmrec``: LGMRec is trained as the backbone, S^pt built from it."""
    metrics = run(
        cfg_factory(
            [
                "experiment=egra_tiny",
                "graph.graph_source=lgmrec",
                "backbones.lgmrec.max_epochs=2",
                "trainer.max_epochs=2",
            ]
        )
    )
    assert metrics["status"] == "ok" and metrics["graph_source"] == "lgmrec"
    assert metrics["pretrain_reused"] is False and metrics["graph_nnz"] > 0
    assert "backbone/test/Recall@20" in metrics


def test_tune_lgmrec_composes(tmp_path):
    from tests.test_sweep import _compose

    cfg = _compose(["model=lgmrec", "data.preset=tiny", "hparams_search=tune_lgmrec"], tmp_path)
    assert cfg.model._target_ == "egra.models.LGMRec" and cfg.task_name == "tune_lgmrec"
    params = cfg.hydra.sweeper.params
    assert set(params) == {
        f"model.{k}" for k in ("n_ui_layers", "n_mm_layers", "n_hyper_layers", "hyper_num")
    } | {f"model.{k}" for k in ("keep_rate", "alpha", "cl_weight", "reg_weight")}
    assert params["model.hyper_num"] == "choice(2, 4, 8, 16, 32, 64, 128, 256)"
