"""Sweeps: the hparams_search configs expand to the intended jobs; a multirun survives a failing
job, reuses the pretrained backbone, can be re-run in place, gives one W&B run per job and
feeds egra-report; the Optuna sweeper runs and survives a failed trial."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from egra.cli.errors import EXIT_FAILED_JOBS
from egra.cli.train import failed_value
from tests.conftest import CONF_DIR
from tests.test_wandb import offline_runs, read_offline_run

ROOT = Path(__file__).resolve().parents[1]
FAIL_ENV = "EGRA_TEST_FAIL_JOBS"


class FailJobs(L.Callback):
    """Fails the EGRA training of the multirun jobs whose numbers are listed in $EGRA_TEST_FAIL_JOBS
    (backbone pretraining, which has no ``align_weight``, is left alone)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not hasattr(getattr(pl_module, "net", None), "align_weight"):
            return
        wanted = [s for s in os.environ.get(FAIL_ENV, "").split(",") if s]
        if HydraConfig.initialized() and str(HydraConfig.get().job.num) in wanted:
            raise RuntimeError(f"planted failure of job {HydraConfig.get().job.num}")


def _compose(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.root_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )


def _jobs(cfg) -> list[list[str]]:
    args = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)[0]


@pytest.mark.parametrize(
    ("name", "n_jobs"), [("lambda_grid", 8), ("k_pt", 3), ("seeds", 5), ("ablations", 8)]
)
def test_grid_sweeps_expand_and_every_job_composes(tmp_path, name, n_jobs):
    cfg = _compose([f"hparams_search={name}"], tmp_path)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.task_name == name
    jobs = _jobs(cfg)
    assert len(jobs) == n_jobs and len({tuple(j) for j in jobs}) == n_jobs
    for job in (jobs[0], jobs[-1]):
        job_cfg = _compose([f"hparams_search={name}", "data.preset=tiny", *job], tmp_path)
        # The sweep names the log folder and W&B group, whatever experiment a job selects.
        assert job_cfg.task_name == name
        if name != "seeds":  # seeds repeats whatever recipe the command line gives
            assert job_cfg.model._target_ == "egra.models.EGRA"
        assert job_cfg.data.preset == "tiny"  # the command line beats the experiment files


def test_ablations_select_each_variant(tmp_path):
    seen = {}
    for (job,) in _jobs(_compose(["hparams_search=ablations"], tmp_path)):
        c = _compose(["hparams_search=ablations", job], tmp_path)
        seen[job.split("=", 1)[1]] = (
            c.graph.graph_source,
            c.callbacks.alignment_schedule.P,
            c.model.entity_weighting,
        )
    assert seen["egra_full"] == ("mgcn", 10, "misaligned_up")
    assert seen["egra_no_enhanced_graph"][0] == "none"
    assert seen["egra_fixed_uniform"][1:] == (0, "uniform")
    assert seen["egra_entity_only"][1:] == (0, "misaligned_up")
    assert seen["egra_epoch_only"][1:] == (10, "uniform")
    assert {seen[f"egra_graph_{s}"][0] for s in ("random", "raw_features", "lightgcn")} == {
        "random",
        "raw_features",
        "lightgcn",
    }


def test_optuna_and_slurm_configs(tmp_path):
    cfg = _compose(["hparams_search=optuna"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "valid/Recall@20" and cfg.skip_if_done is False
    # EGRA's one search space (tune_egra's), with its own budget
    tune = _compose(["hparams_search=tune_egra"], tmp_path).hydra.sweeper
    assert dict(sweeper.params) == dict(tune.params) and sweeper.n_trials == 30
    assert set(sweeper.params) == {
        "callbacks.alignment_schedule.lambda_max",
        "model.beta",
        "model.pt_norm",
        "graph.k_pt",
    }

    slurm = _compose(["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"], tmp_path).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.tasks_per_node == 4  # one task (rank) per GPU
    OmegaConf.to_container(slurm, resolve=True)
    joblib = _compose(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2


def test_failed_value_per_sweeper():
    basic = OmegaConf.create(
        {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}
    )
    assert failed_value(basic) is None
    target = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert (
        failed_value(OmegaConf.create({"sweeper": {"_target_": target, "direction": "maximize"}}))
        == -math.inf
    )
    assert (
        failed_value(OmegaConf.create({"sweeper": {"_target_": target, "direction": "minimize"}})) == math.inf
    )
    both = OmegaConf.create({"sweeper": {"_target_": target, "direction": ["maximize", "minimize"]}})
    assert failed_value(both) == [-math.inf, math.inf]


def _egra_train(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env_extra}
    env.pop("WANDB_DIR", None)
    # `python -m` from the project root, so that tests.test_sweep.FailJobs imports in the child.
    cmd = [sys.executable, "-m", "egra.train", "-m", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_lambda_grid_multirun_survives_failure_reruns_in_place_and_reports(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = [
        "hparams_search=lambda_grid",
        "callbacks.alignment_schedule.lambda_max=0.1",  # a command-line list replaces the config's: 2 × 1 × 1 jobs
        "callbacks.alignment_schedule.P=10",
        "data.preset=tiny",
        "backbones.mgcn.max_epochs=2",
        "trainer.max_epochs=1",
        "logger=wandb",
        "threads=1",
        "trainer.enable_progress_bar=false",
        f"+callbacks.fail._target_={__name__}.FailJobs",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    ]
    job0, job1 = sweep / "0", sweep / "1"

    # 1st launch: job 1 fails; the sweep goes on, keeps job 0's results and ends with status 4.
    first = _egra_train(args, {FAIL_ENV: "1"})
    assert first.returncode == EXIT_FAILED_JOBS, first.stderr[-4000:]
    assert "1 job(s) failed: 1 " in first.stderr
    m0 = json.loads((job0 / "metrics.json").read_text())
    assert m0["pretrain_reused"] is False and m0["graph_reused"] is False
    assert not (job1 / "metrics.json").exists()
    error = (job1 / "error.txt").read_text()
    assert "planted failure of job 1" in error and "callbacks.alignment_schedule.lambda_min=0.01" in error
    # One W&B run per job; the failed job's run is marked failed.
    (r0,), (r1,) = offline_runs(job0), offline_runs(job1)
    w0, w1 = read_offline_run(r0), read_offline_run(r1)
    assert w0.run_id != w1.run_id and w0.group == w1.group == "lambda_grid"
    assert (w0.exit_code, w1.exit_code) == (0, 1)
    lam = [w.config["callbacks"]["alignment_schedule"]["lambda_min"] for w in (w0, w1)]
    assert lam == [0.001, 0.01]

    stamp = (job0 / "metrics.json").stat().st_mtime_ns
    # 2nd launch, same command and sweep dir, no planted failure: job 0 is skipped (metrics.json
    # untouched, no new W&B run), job 1 runs and reuses the pretrained backbone and S^pt.
    second = _egra_train(args, {})
    assert second.returncode == 0, second.stderr[-4000:]
    assert (job0 / "metrics.json").stat().st_mtime_ns == stamp
    assert len(offline_runs(job0)) == 1 and len(offline_runs(job1)) == 2
    m1 = json.loads((job1 / "metrics.json").read_text())
    assert m1["pretrain_reused"] is True and m1["graph_reused"] is True
    assert m1["pretrain_artifact"] == m0["pretrain_artifact"]
    assert not (job1 / "error.txt").exists()

    from egra.cli.report import main as report

    assert report([str(sweep), "--no-plots"]) == 0
    table = capsys.readouterr().out
    results = pd.read_csv(sweep / "results.csv")
    assert len(results) == 2 and (results["status"] == "ok").all()
    assert sorted(results["callbacks.alignment_schedule.lambda_min"]) == [0.001, 0.01]
    assert "0.001" in table and "0.01" in table


@pytest.mark.slow
def test_optuna_sweep_survives_a_failed_trial(tmp_path, monkeypatch):
    """Two Optuna trials in-process (Hydra's multirun, no subprocess): the first fails and
    counts as -inf, the second finishes and is the study's best."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from egra.cli.train import main

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.setenv(FAIL_ENV, "0")
    sweep = tmp_path / "optuna"
    overrides = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "data.preset=tiny",
        "backbones.mgcn.max_epochs=2",
        "trainer.max_epochs=1",
        "logger=none",
        "threads=1",
        "trainer.enable_progress_bar=false",
        f"+callbacks.fail._target_={__name__}.FailJobs",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        # Leave pytest's logging alone.
        "hydra/hydra_logging=none",
        "hydra/job_logging=none",
    ]
    try:
        with (
            initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="train"),
            pytest.raises(SystemExit, match=str(EXIT_FAILED_JOBS)),  # trial 0 failed
        ):
            GlobalHydra.instance().hydra.multirun(
                config_name="train",
                task_function=main.__wrapped__,
                overrides=overrides,
                with_log_configuration=False,
            )
    finally:
        HydraConfig.instance().cfg = None
    assert "planted failure of job 0" in (sweep / "0" / "error.txt").read_text()
    m1 = json.loads((sweep / "1" / "metrics.json").read_text())
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(m1["valid/Recall@20"])
    trial1 = OmegaConf.load(sweep / "1" / ".hydra" / "config.yaml")
    lam = trial1.callbacks.alignment_schedule.lambda_max
    assert best.best_params["callbacks.alignment_schedule.lambda_max"] == pytest.approx(lam)
