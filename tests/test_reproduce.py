"""`make reproduce` (egra-reproduce): the paper's experiments on one dataset, resumable, one report."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

from egra.cli.reproduce import main as reproduce_main
from egra.experiments.reproduce import (
    TITLES,
    Plan,
    Run,
    Setting,
    _compose,
    common_overrides,
    load,
    plan,
    settings,
    write_report,
)
from egra.experiments.study import dataset_label, dataset_overrides
from egra.pipeline.checks import ConfigError
from egra.pipeline.fingerprint import config_hash
from tests.conftest import CONF_DIR

PNGS = (
    "long_tail.png",
    "sensitivity_callbacks_alignment_schedule_lambda_min.png",
    "sensitivity_callbacks_alignment_schedule_lambda_max.png",
    "sensitivity_callbacks_alignment_schedule_P.png",
    "sensitivity_graph_k_pt.png",
)


def test_dataset_names():
    assert dataset_overrides(CONF_DIR, "baby") == ["data=baby"]
    assert dataset_overrides(CONF_DIR, "microlens") == ["data=microlens"]
    assert dataset_overrides(CONF_DIR, "tiny") == ["data=synthetic", "data.preset=tiny"]
    assert dataset_overrides(CONF_DIR, "synthetic-baby") == ["data=synthetic", "data.preset=baby"]
    with pytest.raises(ConfigError, match="expected a data config"):
        dataset_overrides(CONF_DIR, "nope")
    assert dataset_label("baby", ["data=mmrec", "data.root=/x/my-shop"]) == "my-shop"
    assert dataset_label("tiny", ["data=sports"]) == "sports"
    assert dataset_label("tiny", ["data.preset=cobuy"]) == "cobuy"


def test_budgets_list_every_experiment_and_gate_missing_models(tmp_path):
    for name in ("smoke", "full"):
        budget = load(CONF_DIR, [f"budget={name}"])
        found, skipped = settings(budget, CONF_DIR)
        sections = {s.section for s in found}
        assert sections == {"overall", "ablations", "long_tail", "sensitivity"}, name
        assert "freedom" in budget.overall.models
        has_freedom = (Path(CONF_DIR) / "model" / "freedom.yaml").is_file()
        assert ("freedom" in skipped) != has_freedom
        assert {"lgmrec", "damrs"} <= set(budget.overall.models) and not {"lgmrec", "damrs"} & set(skipped)
        assert {s.param for s in found if s.param} == {
            "callbacks.alignment_schedule.lambda_min",
            "callbacks.alignment_schedule.lambda_max",
            "callbacks.alignment_schedule.P",
            "graph.k_pt",
        }
    assert len(load(CONF_DIR, ["budget=full"]).seeds) == 5
    # A model without conf/model/<name>.yaml is skipped with one line, not run.
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "egra.yaml").write_text("{}")
    found, skipped = settings(load(CONF_DIR, ["overall.models=[egra,freedom]", "sensitivity.grids={}"]), conf)
    found = [s for s in found if s.section == "overall"]
    assert [s.label for s in found] == ["egra"]
    assert skipped == ["freedom"]
    assert Plan(tmp_path, [], [0], skipped=skipped).skipped_lines() == [
        "overall: freedom skipped (no conf/model/freedom.yaml)"
    ]
    with pytest.raises(
        ConfigError, match=r"Could not find 'budget/medium' Available options in 'budget': full smoke$"
    ):
        load(CONF_DIR, ["budget=medium"])
    with pytest.raises(ConfigError, match="seedz"):
        load(CONF_DIR, ["+seedz=[1]"])  # the schema: unknown keys are refused


def test_plan_keys_runs_by_config_and_shares_identical_ones(tmp_path):
    """A run's hash is its composed config's (as egra-train's skip_if_done computes it, also for
    seeds set after composing), and settings with one config share one job directory."""
    from hydra import initialize_config_dir

    budget = load(
        CONF_DIR, ["seeds=[0,1]", "max_epochs=2", f"out={tmp_path / 'rep'}"], [f"paths.root_dir={tmp_path}"]
    )
    budget.overall.models = ["egra"]
    budget.ablations, budget.long_tail = {}, {}
    budget.sensitivity.base, budget.sensitivity.grids = ["model=egra"], {"graph.k_pt": [10]}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        p, _ = plan(budget, CONF_DIR)
        direct = _compose([*p.common, "model=egra", "seed=1"], tmp_path / "elsewhere")
    assert [(r.setting.section, r.seed) for r in p.runs] == [
        ("overall", 0),
        ("overall", 1),
        ("sensitivity", 0),
        ("sensitivity", 1),
    ]
    assert p.runs[1].config_hash == config_hash(direct) != p.runs[0].config_hash
    assert len(p.unique()) == 2  # k_pt=10 is EGRA's default: the overall runs
    assert p.runs[3].job_dir == p.runs[1].job_dir == tmp_path / "rep" / "runs" / "overall" / "egra" / "seed1"
    assert p.runs[3].shared_with == "overall / egra"
    assert "trainer.max_epochs=2" in p.common and p.common[-1] == f"paths.root_dir={tmp_path}"


def test_report_marks_collapsed_and_failed_runs(tmp_path):
    """Collapsed runs count in the means and are flagged; failed ones are listed, not averaged."""

    def run(section, label, seed, status, recall, param=None, value=None, model="EGRA"):
        m = None
        if status != "failed":
            m = {"test/Recall@20": recall, "test/NDCG@20": recall / 2, "status": status, "wall_time_s": 1.0}
            m.update({f"test/popgroup{g}/Recall@20": recall * g for g in range(3)})
            if status == "collapsed":
                m["collapse"] = "BPR at ln 2"
        setting = Setting(section, label, (), param, value)
        r = Run(setting, seed, tmp_path / "runs" / section / setting.slug / f"seed{seed}", "h", model)
        r.status, r.metrics = status, m
        r.error = "RuntimeError: boom" if status == "failed" else ""
        return r

    p = Plan(tmp_path, ["data.preset=tiny"], [0, 1])
    p.runs = [
        run("overall", "egra", 0, "ok", 0.2),
        run("overall", "egra", 1, "collapsed", 0.1),
        run("overall", "mgcn", 0, "failed", 0, model="MGCN"),
        run("overall", "mgcn", 1, "failed", 0, model="MGCN"),
        run("ablations", "EGRA", 0, "ok", 0.2),
        run("long_tail", "EGRA", 0, "ok", 0.2),
        run("long_tail", "EGRA without S^pt", 0, "ok", 0.1),
        run("sensitivity", "k_pt=5", 0, "ok", 0.3, "graph.k_pt", 5),
        run("sensitivity", "k_pt=10", 0, "collapsed", 0.1, "graph.k_pt", 10),
    ]
    p.skipped = ["freedom"]
    write_report(p, "t")
    text = (tmp_path / "report.md").read_text()
    assert re.search(r"\| EGRA \| \** ?0\.1500 ± 0\.0707\** \|.*\| 1 ok, 1 collapsed \| 2 \|", text)
    assert re.search(r"\| MGCN \|[ |]*\| 2 failed \| 0 \|", text)  # mgcn: no numbers, but a row
    assert "- failed: overall / mgcn, seed 0 (`runs/overall/mgcn/seed0`): RuntimeError: boom" in text
    assert "- collapsed: overall / egra, seed 1" in text and "BPR at ln 2" in text
    assert "freedom skipped" in text
    assert re.search(r"\| 10 \|.*\| 1 collapsed \| 1 \|", text)
    rows = pd.read_csv(tmp_path / "results.csv")
    assert rows["status"].tolist().count("failed") == 2 and "skipped" in set(rows["status"])


class Boom(L.Callback):
    """Fails a run once it started (a bad setting would be refused before: exit 2)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        raise RuntimeError("planted failure")


@pytest.mark.slow
def test_failed_run_is_reported_and_exits_4(tmp_path, monkeypatch, capsys):
    """A run that fails (here: a callback that raises when the fit starts) is listed with its
    error, keeps its row in the tables, and the command exits 4; the report is written anyway."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "budget").mkdir(parents=True)
    (tmp_path / "mine" / "budget" / "one.yaml").write_text(
        "# @package _global_\nbudget: one\ndataset: tiny\nseeds: [0]\nmax_epochs: 1\nlauncher: in_process\n"
        "overrides: [threads=1, logger=none, trainer.enable_progress_bar=false]\n"
        "overall: {models: [bpr]}\n"
    )
    out = tmp_path / "rep"
    boom = f"+callbacks.boom._target_={__name__}.Boom"
    # A budget of one's own: a folder on Hydra's search path holding budget/<name>.yaml.
    args = [f"hydra.searchpath=[file://{tmp_path / 'mine'}]", "budget=one", f"out={out}"]
    assert reproduce_main([*args, "--", f"paths.root_dir={tmp_path}", boom]) == 4
    assert "1 failed" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "- failed: overall / bpr, seed 0 (`runs/overall/bpr/seed0`): RuntimeError: planted failure" in text
    assert re.search(r"\| BPRMF \|[ |]* 1 failed \| 0 \|", text)
    rows = pd.read_csv(out / "results.csv")
    assert rows["status"].tolist() == ["failed"] and "planted failure" in rows["error"][0]


def _metrics_mtimes(out: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.json")}


def _launched(printed: str) -> int:
    return int(re.search(r"(\d+) run now", printed).group(1))


@pytest.mark.slow
def test_smoke_reproduction_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    """BUDGET=smoke on tiny through egra-reproduce's entry point: every section, figure and
    results.csv row; a second call runs nothing; a deleted result re-runs that job alone."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rep"
    args = ["budget=smoke", "dataset=tiny", f"out={out}", "--", f"paths.root_dir={tmp_path}"]
    assert reproduce_main(args) == 0
    first = capsys.readouterr().out

    text = (out / "report.md").read_text()
    for title in TITLES.values():
        assert f"## {title}" in text
    for name in PNGS:
        assert (out / name).stat().st_size > 1000, name
    budget = load(CONF_DIR, ["budget=smoke"])
    found, skipped = settings(budget, CONF_DIR)
    rows = pd.read_csv(out / "results.csv")
    ran = rows[rows["status"] != "skipped"]
    assert len(ran) == len(found) * len(budget.seeds)
    assert set(ran["status"]) == {"ok"} and ran["test/Recall@20"].notna().all()
    assert ran.groupby("experiment").size().to_dict() == {
        "overall": len(budget.overall.models) - len(skipped),
        "ablations": len(budget.ablations),
        "long_tail": len(budget.long_tail),
        "sensitivity": sum(len(v) for v in budget.sensitivity.grids.values()),
    }
    assert (rows["status"] == "skipped").sum() == len(skipped)
    for model in ("BPRMF", "LightGCN", "MGCN", "EGRA"):
        assert re.search(rf"\| {model} \|.*\| 1 ok \| 1 \|", text)
    # Identical configs share one job: EGRA is in every section, sensitivity defaults too.
    jobs = _metrics_mtimes(out)
    assert len(jobs) == ran["job"].nunique() < len(ran)
    assert _launched(first) == len(jobs)

    # A second invocation reuses every job (keyed by config hash) and trains nothing.
    assert reproduce_main(args) == 0
    assert _launched(capsys.readouterr().out) == 0
    assert _metrics_mtimes(out) == jobs

    # Deleting one job's metrics re-runs exactly that job (here in a `python -m egra.train`
    # subprocess, full's launcher: its config hash is the one planned in this process).
    victim = out / "runs" / "ablations" / "entity-level_only" / "seed0" / "metrics.json"
    victim.unlink()
    assert reproduce_main(["launcher=subprocess", *args]) == 0
    assert _launched(capsys.readouterr().out) == 1
    after = _metrics_mtimes(out)
    assert {p for p in jobs if after[p] != jobs[p]} == {victim}


def test_backbone_epochs_caps_every_trained_backbone():
    """The cap reaches each backbone conf/backbones/default.yaml trains (FREEDOM included), not the
    untrained ones (raw features, random vectors)."""
    budget = load(CONF_DIR, ["backbone_epochs=3", "max_epochs=null", "dataset=tiny"])
    out = common_overrides(budget, CONF_DIR)
    caps = sorted(o for o in out if o.startswith("backbones."))
    assert caps == [f"backbones.{b}.max_epochs=3" for b in ("damrs", "freedom", "lgmrec", "lightgcn", "mgcn")]


def test_dry_run_plans_and_names_missing_data(tmp_path, capsys):
    """A real dataset the user has not placed yet: the dry run lists every job and says which
    folder or file a real run would stop at; nothing runs."""
    out = tmp_path / "rep"
    args = ["budget=smoke", "dataset=baby", "dry_run=true", f"out={out}", "--", f"paths.root_dir={tmp_path}"]
    assert reproduce_main(args) == 0
    printed = capsys.readouterr().out
    assert "would run: overall / egra, seed 0" in printed
    assert re.search(r"data: .*baby.*does not exist.*exit status 3", printed)
    assert not (out / "runs").exists()
