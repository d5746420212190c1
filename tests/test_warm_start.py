"""optim.init=backbone: EGRA starts from its trained backbone's best-valid weights."""

from __future__ import annotations

import pytest
import torch

from egra.models import EGRA, MGCN
from egra.pipeline import pretrain
from egra.pipeline.cache import ArtifactCache
from egra.pipeline.fit import warm_start
from egra.pipeline.train import run
from tests.toy_models import toy_data, toy_graphs, toy_item_graph


def _trained_mgcn(d) -> MGCN:
    torch.manual_seed(1)
    m = MGCN(**d, **toy_graphs(d))
    with torch.no_grad():  # weights unlike any fresh initialisation
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def test_warm_start_without_item_graph_reproduces_the_backbone():
    # EGRA = MGCN + S^pt + alignment: with MGCN's purifier, no S^pt and the backbone's weights
    # it must score exactly like the backbone (alignment only changes the loss).
    d = toy_data()
    mgcn = _trained_mgcn(d).eval()
    torch.manual_seed(2)
    egra = EGRA(**d, **toy_graphs(d), item_graph=None, modality_input="purifier").eval()
    loaded = warm_start(egra, {k: v.numpy() for k, v in mgcn.state_dict().items()}, "mgcn")
    assert set(loaded) == set(egra.state_dict())
    with torch.no_grad():
        for a, b in zip(mgcn.embeddings(), egra.embeddings()):
            torch.testing.assert_close(a, b)
        # With S^pt the behavior view moves, but the weights are still the backbone's.
        enhanced = EGRA(
            **d, **toy_graphs(d), item_graph=toy_item_graph(d["n_items"]), modality_input="purifier"
        )
        warm_start(enhanced, mgcn.state_dict(), "mgcn")
        assert not torch.allclose(enhanced.eval().embeddings()[1], mgcn.embeddings()[1])
    torch.testing.assert_close(enhanced.item_emb, mgcn.item_emb)


def test_warm_start_copies_what_matches_and_refuses_other_tables():
    d = toy_data()
    mgcn = _trained_mgcn(d)
    gate = EGRA(**d, **toy_graphs(d), item_graph=None)  # gate: no purifier maps to receive
    loaded = warm_start(gate, mgcn.state_dict(), "mgcn")
    assert "item_emb" in loaded and not any(k.startswith("purifier.") for k in loaded)
    torch.testing.assert_close(gate.user_emb, mgcn.user_emb)
    wide = EGRA(**d, **toy_graphs(d), item_graph=None, embedding_dim=32)
    with pytest.raises(ValueError, match="optim.init=backbone.*embedding_dim"):
        warm_start(wide, mgcn.state_dict(), "mgcn")


def test_pipeline_starts_from_the_backbone_artifact(cfg_factory):
    cfg = cfg_factory(
        [
            "model=egra",
            "optim.init=backbone",
            "model.modality_input=purifier",
            "backbones.mgcn.max_epochs=2",
            "trainer.max_epochs=1",
        ]
    )
    metrics = run(cfg)
    art = ArtifactCache(cfg.paths.artifact_dir).get(
        "embeddings", metrics["pretrain_artifact"].rsplit("/", 1)[1]
    )
    state = pretrain.backbone_state(art)
    assert {"user_emb", "item_emb"} <= set(state)
    # Every tensor of EGRA with MGCN's purifier has its counterpart in the backbone.
    assert metrics["init_tensors"] == len(state)
    assert metrics["status"] == "ok"
