"""Kill a run after 2 of 4 epochs, resume it with ``ckpt_path=last``: same result as no kill."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from egra.pipeline.train import run

COMPARED = ("test/Recall@20", "test/NDCG@20", "valid/Recall@20", "valid/NDCG@20", "best_epoch", "epochs_run")


class Killed(RuntimeError):
    """The simulated crash (an exception the run passes on; Lightning turns Ctrl-C into sys.exit)."""


class KillAt(L.Callback):
    """Raises at the start of training epoch ``epoch`` (0-based): a crash after ``epoch`` epochs."""

    def __init__(self, epoch: int = 2):
        self.epoch = int(epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise Killed(f"simulated kill at the start of epoch {self.epoch}")


def _kill_overrides(epoch: int) -> list[str]:
    return [f"+callbacks.kill._target_={__name__}.KillAt", f"+callbacks.kill.epoch={epoch}"]


def _interrupt_and_resume(cfg_factory, base: list[str]) -> tuple[dict, dict]:
    full = run(cfg_factory(base, sub="full"))

    killed_cfg = cfg_factory(base + _kill_overrides(2), sub="resumed")
    out_dir = Path(killed_cfg.paths.output_dir)
    with pytest.raises(Killed):
        run(killed_cfg)
    last = out_dir / "checkpoints" / "last.ckpt"
    assert last.exists() and not (out_dir / "metrics.json").exists()
    # The latest epoch (0 and 1 done), not the best one: Lightning 2.6's save_last only writes
    # when a top-k checkpoint is written (conf/callbacks/default.yaml has its own last_checkpoint).
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1

    # Same output directory, same config, no kill: continues from epoch 2.
    resumed = run(cfg_factory(base + ["ckpt_path=last"], sub="resumed"))
    assert json.loads((out_dir / "metrics.json").read_text()) == resumed
    return full, resumed


def _assert_same(full: dict, resumed: dict) -> None:
    for key in COMPARED:
        assert resumed[key] == full[key], key
    assert resumed["epochs_run"] == 4


@pytest.mark.slow
def test_resume_lightgcn_matches_uninterrupted(cfg_factory):
    full, resumed = _interrupt_and_resume(cfg_factory, ["model=lightgcn", "trainer.max_epochs=4"])
    _assert_same(full, resumed)


@pytest.mark.slow
def test_resume_egra_matches_uninterrupted(cfg_factory):
    """EGRA adds the λ(t) schedule (a function of the epoch) and the cached pretrain stage,
    which the resumed run reuses while the uninterrupted one trained it. (KillAt is also in the
    backbone's callbacks, but 2 backbone epochs never reach epoch 2.)"""
    base = [
        "model=egra",
        "backbones.mgcn.max_epochs=2",
        "trainer.max_epochs=4",
        "callbacks.alignment_schedule.P=3",
    ]
    full, resumed = _interrupt_and_resume(cfg_factory, base)
    assert full["pretrain_reused"] is False and resumed["pretrain_reused"] is True
    _assert_same(full, resumed)


@pytest.mark.slow
def test_reused_pretrain_gives_the_same_run(cfg_factory):
    """The 2nd job of a sweep reuses the backbone the 1st one trained; training it had moved
    the global RNGs, reusing it does not, yet both must start EGRA from the same weights."""
    base = ["model=egra", "backbones.mgcn.max_epochs=2", "trainer.max_epochs=1"]
    built = run(cfg_factory(base, sub="shared"))
    cfg = cfg_factory(base, sub="shared")
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).with_name("run2"))
    reused = run(cfg)
    assert built["pretrain_reused"] is False and reused["pretrain_reused"] is True
    for key in ("test/Recall@20", "test/NDCG@20", "valid/Recall@20"):
        assert reused[key] == built[key], key


def test_skip_if_done_does_not_skip_a_resume(cfg_factory, monkeypatch):
    """A finished run is skipped on re-run, but not when a checkpoint is asked for."""
    cfg = cfg_factory(["model=bpr", "trainer.max_epochs=1"])
    first = run(cfg)
    assert run(cfg) == first  # skipped: same dict, read back
    calls = []
    import egra.pipeline.fit as fit_mod

    real = fit_mod.fit
    monkeypatch.setattr(fit_mod, "fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(cfg_factory(["model=bpr", "trainer.max_epochs=2", "ckpt_path=last"]))
    assert calls == [1]


@pytest.mark.slow
def test_resume_keeps_the_metrics_history_and_the_fit_time(cfg_factory):
    """The resumed run's CSV curve is the uninterrupted run's (every epoch once, those before
    the kill too); fit_time_s adds the time before the kill, which the checkpoint carries."""
    base = ["model=lightgcn", "trainer.max_epochs=4", "logger=csv"]
    full_cfg = cfg_factory(base, sub="full")
    run(full_cfg)
    killed_cfg = cfg_factory(base + _kill_overrides(2), sub="resumed")
    out_dir = Path(killed_cfg.paths.output_dir)
    with pytest.raises(Killed):
        run(killed_cfg)
    ckpt = torch.load(out_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    before_s = ckpt["callbacks"]["FitClock"]["fit_time_s"]
    assert before_s > 0

    resumed = run(cfg_factory(base + ["ckpt_path=last"], sub="resumed"))

    def curve(run_dir) -> pd.DataFrame:
        rows = pd.read_csv(Path(run_dir) / "csv" / "metrics.csv")
        return rows.dropna(subset=["valid/Recall@20"])[["epoch", "step", "valid/Recall@20"]]

    expected = curve(full_cfg.paths.output_dir)
    assert list(expected["epoch"])[:4] == [0, 1, 2, 3]  # + the best checkpoint's final evaluation
    pd.testing.assert_frame_equal(curve(out_dir).reset_index(drop=True), expected.reset_index(drop=True))
    assert resumed["fit_time_s"] > before_s


@pytest.mark.slow
def test_killed_backbone_pretraining_resumes_from_its_checkpoint(cfg_factory, caplog):
    """A kill during MGCN pretraining leaves ``.<key>.work/checkpoints/last.ckpt``; the next run
    continues it (and gets the backbone an uninterrupted run gets)."""
    base = ["model=egra", "backbones.mgcn.max_epochs=4", "trainer.max_epochs=1"]
    full = run(cfg_factory(base, sub="full"))
    with pytest.raises(Killed):
        run(cfg_factory(base + _kill_overrides(2), sub="killed"))
    (work,) = (Path(cfg_factory(base, sub="killed").paths.artifact_dir) / "embeddings").glob(".*.work")
    assert (work / "checkpoints" / "last.ckpt").is_file()

    with caplog.at_level(logging.INFO, logger="egra.pipeline.fit"):
        resumed = run(cfg_factory(base, sub="killed"))
    assert f"resuming from {work / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert not work.exists()  # the artifact is complete: its work dir is gone
    for key in ("backbone/valid/Recall@20", "backbone/test/Recall@20", "test/Recall@20"):
        assert resumed[key] == full[key], key
