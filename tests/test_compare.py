"""`egra-compare`: the protocol (selection seeds apart from evaluation seeds, equal budget, seed-level
tests, Holm, hierarchical bootstrap) and its numbers against direct computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from scipy import stats as sps

from egra.cli.report import main as report_main
from egra.cli.train import main as train_main
from egra.experiments.compare import (
    COMPARE_JSON,
    COMPARE_MD,
    STAMP,
    Candidate,
    Study,
    _stamped,
    backbone_overrides,
    check,
    choose,
    load,
    selection_line,
)
from egra.pipeline.checks import ConfigError
from egra.pipeline.io import PER_USER_FILE
from tests.conftest import CONF_DIR
from tests.test_stats import _bootstrap_by_hand


def test_protocol_rules_are_checked():
    with pytest.raises(ConfigError, match=r"share \[0\]: selection must not see an evaluated seed"):
        load(CONF_DIR, ["selection_seeds=[0]"])
    with pytest.raises(ConfigError, match="reference='nope'"):
        load(CONF_DIR, ["reference=nope"])
    with pytest.raises(ConfigError, match="compute_match='x'"):
        load(CONF_DIR, ["compute_match=x"])
    with pytest.raises(ConfigError, match="compare: .*trials"):
        load(CONF_DIR, ["trials=many"])  # the schema: an int
    bad = OmegaConf.merge(
        load(CONF_DIR, ["models=self_graph"]),
        {"models": {"pretrained": {"backbone": "self:x"}}},
    )
    with pytest.raises(ConfigError, match="list self before pretrained"):
        check(bad)
    assert list(load(CONF_DIR, ["models=self_graph"]).models) == ["pretrained", "self"]
    cfg = load(CONF_DIR, [], ["trainer.max_epochs=3"])
    assert cfg.overrides[-1] == "trainer.max_epochs=3" and cfg.endpoint == "test/Recall@20"
    assert not set(cfg.selection_seeds) & set(cfg.eval_seeds)


def test_choice_tie_break_and_ineligible_candidates():
    def cand(name, valid, ndcg, status="ok"):
        c = Candidate(name, {} if name == "defaults" else {"model.x": name})
        c.runs = {100: {"valid/Recall@20": valid, "valid/NDCG@20": ndcg}}
        c.statuses = {100: status}
        return c

    assert choose([cand("defaults", 0.2, 0.1), cand("a", 0.3, 0.1)], "valid/Recall@20") == 1
    # equal valid Recall: the better valid NDCG, then the earlier candidate
    assert choose([cand("defaults", 0.3, 0.1), cand("a", 0.3, 0.2)], "valid/Recall@20") == 1
    assert choose([cand("defaults", 0.3, 0.1), cand("a", 0.3, 0.1)], "valid/Recall@20") == 0
    # a collapsed candidate is never chosen, however high its score
    assert choose([cand("defaults", 0.2, 0.1), cand("a", 0.9, 0.5, "collapsed")], "valid/Recall@20") == 0


def test_the_protocol_says_when_nothing_was_selected():
    p = {"trials": 0, "selection_metric": "valid/Recall@20", "selection_seeds": [100], "tie_break": "x"}
    assert selection_line(p) == "- Selection: none (`trials=0`): every model runs its shipped defaults."
    line = selection_line({**p, "trials": 8})
    assert "defaults + 8 Optuna trials" in line and "seed(s) 100" in line


def test_backbone_takes_the_chosen_parameters_of_its_model():
    spec = OmegaConf.create({"backbone": "MGCN:mgcn"})
    chosen = {"MGCN": {"model.cl_loss": 0.02, "model.n_ui_layers": 3, "seed": 1}}
    assert backbone_overrides(spec, chosen) == [
        "backbones.mgcn.model.cl_loss=0.02",
        "backbones.mgcn.model.n_ui_layers=3",
    ]
    assert backbone_overrides(OmegaConf.create({"backbone": None}), chosen) == []
    with pytest.raises(ConfigError, match="list MGCN before"):
        backbone_overrides(spec, {})


def test_a_selection_made_under_other_settings_is_set_aside(tmp_path):
    d = tmp_path / "select" / "EGRA"
    _stamped(d, {"overrides": ["a=1"]}, print)
    (d / "trials").mkdir()
    _stamped(d, {"overrides": ["a=1"]}, print)  # same settings: kept
    assert (d / "trials").is_dir()
    _stamped(d, {"overrides": ["a=2"]}, print)  # the backbone's chosen parameters changed
    assert (tmp_path / "select" / "EGRA.stale1" / "trials").is_dir() and not (d / "trials").exists()
    assert json.loads((d / STAMP).read_text()) == {"overrides": ["a=2"]}


@pytest.mark.slow
def test_compare_on_tiny_end_to_end_and_its_numbers(tmp_path, monkeypatch):
    """1 trial, selection seed 100, evaluation seeds 0 and 1: the table has the protocol header,
    seed-level and Holm-adjusted p-values and bootstrap CIs, each equal to a direct computation
    from the runs' own files; a re-run reuses every job."""
    monkeypatch.chdir(tmp_path)
    study_args = [
        "dataset=tiny",
        "trials=1",
        "eval_seeds=[0,1]",
        f"out={tmp_path / 'cmp'}",
        "bootstrap_samples=200",
    ]
    train_args = [
        "trainer.max_epochs=2",
        "backbones.mgcn.max_epochs=2",
        "logger=none",
        f"paths.root_dir={tmp_path}",
    ]
    cfg = load(CONF_DIR, study_args, train_args)
    lines: list[str] = []
    result = Study(cfg, CONF_DIR, train_main.__wrapped__, lines.append).run()
    out = tmp_path / "cmp"
    md = (out / COMPARE_MD).read_text()
    for heading in (
        "## Protocol",
        "## Primary endpoint: test/Recall@20",
        "## Secondary endpoints",
        "## Selection",
        "## Compute",
    ):
        assert heading in md
    assert "seed(s) 100, disjoint from the evaluation seeds" in md
    assert json.loads((out / COMPARE_JSON).read_text())["protocol"]["eval_seeds"] == [0, 1]

    models = result["models"]
    tuned = [m for m, r in models.items() if len(r["selection"]["candidates"]) > 1]
    assert tuned == ["LightGCN", "MGCN", "FREEDOM", "LGMRec", "DA-MRS", "EGRA"]  # the paper row is not tuned
    for label in tuned:
        # every tuned model had the same budget: its defaults + 1 trial, on selection seed 100 only
        assert (out / "select" / label / "trials" / "0" / "metrics.json").is_file()
        assert not (out / "select" / label / "trials" / "1").exists()
        runs = list((out / "select" / label).rglob("metrics.json"))
        assert len(runs) == 2 and {json.loads(f.read_text())["seed"] for f in runs} == {100}
    for row in models.values():
        for s in (0, 1):
            m = json.loads((Path(row["runs"][str(s)]) / "metrics.json").read_text())
            assert m["seed"] == s and row["per_seed"]["test/Recall@20"][s] == pytest.approx(
                m["test/Recall@20"]
            )
    assert models["EGRA"]["compute"]["trainings"] == 2 and models["LightGCN"]["compute"]["trainings"] == 1

    # The numbers against a direct computation.
    tests = result["tests"]
    assert len(tests) == 6 * 3 and [t["primary"] for t in tests[:3]] == [True, False, False]
    for t in tests:
        other = t["comparison"].split(" vs ", 1)[1]
        a, b = models["EGRA"]["per_seed"][t["endpoint"]], models[other]["per_seed"][t["endpoint"]]
        p = sps.ttest_rel(a, b).pvalue if np.ptp(np.subtract(a, b)) > 0 else math.nan
        assert t["p"] == pytest.approx(p, nan_ok=True)
        assert t["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    raw = [t["p"] for t in tests]
    finite = sorted((p, i) for i, p in enumerate(raw) if not math.isnan(p))
    running, adjusted = 0.0, {}
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    for i, t in enumerate(tests):
        assert t["p_holm"] == pytest.approx(adjusted.get(i, math.nan), nan_ok=True)
    checked = 0
    for t in tests:
        if "bootstrap" not in t:
            assert "popgroup" in t["endpoint"]  # no per-user values for the tail metric
            continue
        other = t["comparison"].split(" vs ", 1)[1]
        key = t["endpoint"].split("/", 1)[1]
        diffs = []
        for s in (0, 1):
            fa = np.load(Path(models["EGRA"]["runs"][str(s)]) / PER_USER_FILE)
            fb = np.load(Path(models[other]["runs"][str(s)]) / PER_USER_FILE)
            va, vb = dict(zip(fa["users"].tolist(), fa[key])), dict(zip(fb["users"].tolist(), fb[key]))
            diffs.append(np.array([va[u] - vb[u] for u in sorted(set(va) & set(vb))]))
        lo, hi = _bootstrap_by_hand(diffs, 200, 0, 0.95)
        assert t["bootstrap"]["ci_low"] == pytest.approx(lo) and t["bootstrap"]["ci_high"] == pytest.approx(
            hi
        )
        assert f"[{lo:+.4f}, {hi:+.4f}]" in md
        checked += 1
    assert checked == 12

    # A second call trains nothing and renders the same table; egra-report prints it.
    lines.clear()
    again = Study(
        load(CONF_DIR, study_args, train_args), CONF_DIR, train_main.__wrapped__, lines.append
    ).run()
    assert [ln for ln in lines if "seeds" in ln or "trials" in ln or "defaults" in ln] == []
    assert again["tests"] == tests
    # launch=false analyses what exists and launches nothing (newer analysis code, old runs).
    cfg = load(CONF_DIR, [*study_args, "launch=false"], train_args)
    assert Study(cfg, CONF_DIR, train_main.__wrapped__, lines.append).run()["tests"] == tests
    revision = json.loads((out / "eval" / "EGRA" / "seed0" / "metrics.json").read_text())["git_revision"]
    assert again["provenance"]["run_revisions"] == ([revision] if revision else [])
    assert report_main([str(out)]) == 0


def test_reuse_links_an_identical_evaluation_run_of_another_comparison(tmp_path):
    """A defaults-only study reuses the tuned study's run of the same config (same overrides),
    and trains what differs."""
    other = tmp_path / "tuned"
    planned = ["data=synthetic", "data.preset=tiny", "model=mgcn", "data.seed=${seed}"]
    for s in (0, 1):
        d = other / "eval" / "MGCN" / f"seed{s}"
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*planned, f"seed={s}"]))
        (d / "metrics.json").write_text(json.dumps({"seed": s, "test/Recall@20": 0.1}))
    cfg = load(CONF_DIR, ["dataset=tiny", "vary_data=true", f"reuse=[{other}]", f"out={tmp_path / 'mine'}"])
    study = Study(cfg, CONF_DIR, echo=lambda _: None)
    launched = []
    study._train = lambda overrides, log, multirun: launched.append(overrides) or 0
    study.evaluate("MGCN", planned[:3], {}, [0, 1, 2], "eval")
    assert (tmp_path / "mine" / "eval" / "MGCN" / "seed0").resolve() == other / "eval" / "MGCN" / "seed0"
    assert (tmp_path / "mine" / "eval" / "MGCN" / "seed1").is_symlink()
    assert len(launched) == 1 and "seed=0,1,2" in launched[0]  # seed 2 was never run there
    launched.clear()
    study.evaluate("MGCN", [*planned[:3], "model.cl_loss=0.02"], {}, [0], "eval")  # another config
    assert len(launched) == 1
    # a third study reusing only the second one follows its link to the run itself
    cfg3 = load(
        CONF_DIR,
        ["dataset=tiny", "vary_data=true", f"reuse=[{tmp_path / 'mine'}]", f"out={tmp_path / 'third'}"],
    )
    third = Study(cfg3, CONF_DIR, echo=lambda _: None)
    third._train = lambda overrides, log, multirun: launched.append(overrides) or 0
    launched.clear()
    third.evaluate("MGCN", planned[:3], {}, [0, 1], "eval")
    assert not launched
    assert (tmp_path / "third" / "eval" / "MGCN" / "seed1").readlink() == other / "eval" / "MGCN" / "seed1"
