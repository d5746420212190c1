"""A finished run is reused only for the config that produced it (``config_hash`` in metrics.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from egra.pipeline.fingerprint import HASH_KEY, config_changes, config_hash, hashed_config
from egra.pipeline.train import run
from tests.conftest import CONF_DIR


def test_hash_ignores_where_and_how_a_run_reports(cfg_factory):
    a = cfg_factory(["trainer.max_epochs=1"])
    b = cfg_factory(["trainer.max_epochs=1", "logger=csv", "threads=2", "skip_if_done=false"])
    b.paths.output_dir = "/elsewhere/run"  # checkpoint dirs under it too: a moved sweep still matches
    b.trainer.enable_progress_bar = True
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(cfg_factory(["trainer.max_epochs=2"]))
    assert config_hash(a) != config_hash(cfg_factory(["trainer.max_epochs=1", "model=bpr"]))
    assert config_hash(a) != config_hash(cfg_factory(["trainer.max_epochs=1"], sub="other-data-root"))
    changed = cfg_factory(["trainer.max_epochs=1", "model.n_layers=3"])
    assert config_changes(hashed_config(a), hashed_config(changed)) == "model.n_layers: 2 -> 3"


def test_another_model_in_a_finished_run_dir_reruns(cfg_factory, caplog):
    first = run(cfg_factory(["trainer.max_epochs=1"]))
    assert first[HASH_KEY]
    with caplog.at_level(logging.WARNING, logger="egra.pipeline.fingerprint"):
        second = run(cfg_factory(["trainer.max_epochs=1", "model=bpr"]))
    assert second["model"] == "BPRMF" and second[HASH_KEY] != first[HASH_KEY]
    assert "model._target_: egra.models.LightGCN -> egra.models.BPRMF" in caplog.text
    out = Path(cfg_factory().paths.output_dir)
    assert json.loads((out / "metrics.json").read_text()) == second


def _multirun(overrides: list[str]) -> None:
    from egra.cli.train import main

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="train"):
            GlobalHydra.instance().hydra.multirun(
                config_name="train",
                task_function=main.__wrapped__,
                overrides=[*overrides, "hydra/hydra_logging=none", "hydra/job_logging=none"],
                with_log_configuration=False,
            )
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
def test_sweep_rerun_with_a_changed_grid_reruns_changed_jobs(tmp_path, capsys):
    """``model.n_layers=1,2`` then ``1,3`` into one sweep dir: job 0 is reused, job 1 re-runs,
    and egra-report labels job 1's numbers with n_layers=3."""
    sweep = tmp_path / "sweep"
    base = [
        "data.preset=tiny",
        "trainer.max_epochs=1",
        "logger=none",
        "threads=1",
        "trainer.enable_progress_bar=false",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    ]
    _multirun([*base, "model.n_layers=1,2"])
    job0, job1 = sweep / "0", sweep / "1"
    stamp0 = (job0 / "metrics.json").stat().st_mtime_ns
    old1 = json.loads((job1 / "metrics.json").read_text())

    _multirun([*base, "model.n_layers=1,3"])
    assert (job0 / "metrics.json").stat().st_mtime_ns == stamp0  # same config: reused
    new1 = json.loads((job1 / "metrics.json").read_text())
    assert new1[HASH_KEY] != old1[HASH_KEY]
    assert "n_layers: 3" in (job1 / "config_resolved.yaml").read_text()

    from egra.cli.report import main as report

    assert report([str(sweep), "--no-plots"]) == 0
    capsys.readouterr()
    rows = pd.read_csv(sweep / "results.csv").set_index("model.n_layers")
    assert sorted(rows.index) == [1, 3]
    assert rows.loc[3, "test/Recall@20"] == pytest.approx(new1["test/Recall@20"])


def test_resume_refuses_another_model_before_any_stage(cfg_factory, monkeypatch):
    import egra.pipeline.load as load_mod
    from egra.pipeline.checks import ConfigError

    run(cfg_factory(["trainer.max_epochs=1"]))
    monkeypatch.setattr(load_mod, "load_data", lambda cfg: pytest.fail("a stage started"))
    with pytest.raises(
        ConfigError, match=r"ckpt_path=last: .*last.ckpt belongs to another run \(model.n_layers: 2 -> 3\)"
    ):
        run(cfg_factory(["trainer.max_epochs=2", "model.n_layers=3", "ckpt_path=last"]))
