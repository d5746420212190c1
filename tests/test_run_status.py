"""A run that never validated, or whose loss or scores became non-finite or exploded, does not
end ``status: ok``; a backbone that did is never cached."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from egra.models import BPRMF
from egra.pipeline.train import run


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("egra")
    ]


def test_a_run_without_validation_is_not_ok(cfg_factory, caplog):
    cfg = cfg_factory(["model=bpr", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=5"])
    with caplog.at_level(logging.WARNING):
        m = run(cfg)
    assert m["status"] == "no_validation" and m["best_epoch"] == -1
    assert "trainer.check_val_every_n_epoch=5" in m["status_reason"]
    assert _warnings(caplog) == [m["status_reason"]]
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt").exists()


def test_exploding_weights_are_diverged(cfg_factory, caplog):
    """lr=1e9: Adam moves every weight by ~1e9 a step; the loss stays finite, the scores do not."""
    with caplog.at_level(logging.WARNING):
        m = run(cfg_factory(["model=bpr", "trainer.max_epochs=5", "optim.optimizer.lr=1e9"]))
    assert m["status"] == "diverged" and m["epochs_run"] == 1  # stopped at the first validation
    assert (
        "callbacks.collapse_guard.max_abs" in m["status_reason"]
        and "optim.optimizer.lr" in m["status_reason"]
    )
    assert _warnings(caplog) == [m["status_reason"]]


class PoisonAt(L.Callback):
    """From training epoch ``epoch`` on, the model's loss is NaN (a step that overflowed)."""

    def __init__(self, epoch: int):
        self.epoch = int(epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl_module.net.poisoned = trainer.current_epoch >= self.epoch


def test_a_non_finite_loss_is_diverged_and_the_best_finite_epoch_is_tested(cfg_factory, monkeypatch, caplog):
    real_loss = BPRMF.loss

    def loss(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        if getattr(self, "poisoned", False):
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(BPRMF, "loss", loss)
    overrides = [
        "model=bpr",
        "trainer.max_epochs=6",
        f"+callbacks.poison._target_={__name__}.PoisonAt",
        "+callbacks.poison.epoch=2",
    ]
    with caplog.at_level(logging.WARNING):
        m = run(cfg_factory(overrides))
    assert m["status"] == "diverged" and "not finite" in m["status_reason"]
    assert m["epochs_run"] == 3 and m["best_epoch"] <= 1  # NaN weights never score as the best
    assert all(math.isfinite(m[k]) and m[k] > 0 for k in ("valid/Recall@20", "test/Recall@20"))
    assert _warnings(caplog) == [m["status_reason"]]


def test_a_diverged_backbone_is_never_cached(cfg_factory):
    from egra.pipeline.pretrain import BackboneFailed
    from egra.pipeline.pretrain import run as pretrain_run

    cfg = cfg_factory(
        ["backbone=lightgcn", "backbones.lightgcn.max_epochs=3", "optim.optimizer.lr=1e9"],
        config_name="pretrain",
    )
    with pytest.raises(BackboneFailed, match="backbone lightgcn: diverged at epoch 0"):
        pretrain_run(cfg)
    done = [p for p in (Path(cfg.paths.artifact_dir) / "embeddings").iterdir() if not p.name.startswith(".")]
    assert done == []


def test_nan_representations_score_nan_not_perfect():
    """Ranking NaN scores would put every held-out item first: the module reports NaN instead."""
    from egra.training.module import RecommenderModule

    net = BPRMF(
        n_users=3,
        n_items=5,
        train_users=torch.tensor([0, 1, 2]).numpy(),
        train_items=torch.tensor([0, 1, 2]).numpy(),
        features={},
    )
    with torch.no_grad():
        net.item_emb.fill_(float("nan"))
    module = RecommenderModule(net=net, optimizer=torch.optim.Adam, ks=(1, 2))
    module._prefix = "valid"
    module._start_eval()
    assert math.isnan(module.eval_scale)
    batch = {
        "users": torch.tensor([0, 1]),
        "truth_rows": torch.tensor([0, 1]),
        "truth_items": torch.tensor([3, 4]),
        "mask_rows": torch.tensor([0, 1]),
        "mask_items": torch.tensor([0, 1]),
    }
    module._eval_step(batch)
    out = module._finish_eval("valid")
    assert out and all(math.isnan(v) for v in out.values())
