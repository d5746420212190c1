"""`egra-compare`: equal tuning budget per model, seeds, paired tests; egra-report renders it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from egra.cli.report import main as report_main
from egra.pipeline.compare import Entry, _override, backbone_overrides, compare, paired_tests


def test_paired_tests_known_values():
    a = np.array([0.30, 0.32, 0.31, 0.35, 0.33])
    b = a - np.array([0.01, 0.02, 0.015, 0.03, 0.01])
    t = paired_tests(a, b)
    assert t["n"] == 5 and t["mean_diff"] == pytest.approx(0.017)
    assert t["p_ttest"] < 0.05
    assert t["p_wilcoxon"] == pytest.approx(0.0625)  # exact, 5 pairs all positive: 2/32
    same = paired_tests(a, a)
    assert same["p_wilcoxon"] == 1.0 and np.isnan(same["p_ttest"])


def test_backbone_takes_the_tuned_parameters_of_its_model():
    tuned = {"MGCN": {"params": {"model.cl_loss": 0.02, "model.n_ui_layers": 3, "seed": 1}}}
    entry = Entry("EGRA", "model=egra", "tune_egra", backbone=("MGCN", "mgcn"))
    assert backbone_overrides(entry, tuned) == [
        "backbones.mgcn.model.cl_loss=0.02",
        "backbones.mgcn.model.n_ui_layers=3",
    ]
    assert backbone_overrides(Entry("MGCN", "model=mgcn", "tune_mgcn"), tuned) == []
    with pytest.raises(ValueError, match="list MGCN before it"):
        backbone_overrides(entry, {})


@pytest.mark.slow
def test_compare_on_tiny_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cmp"
    extra = ["trainer.max_epochs=2", "backbones.mgcn.max_epochs=2", "threads=1", "logger=none"]
    result = compare(out, preset="tiny", trials=1, seeds=(0, 1), extra=extra)
    assert set(result["models"]) == {"LightGCN", "MGCN", "EGRA"}
    for label, row in result["models"].items():
        assert len(row["test/Recall@20"]["per_seed"]) == 2, label
        # the better of the defaults and the study's best was re-run
        assert row["chosen"] in ("defaults", "study") and bool(row["params"]) == (row["chosen"] == "study")
        assert row["tuned_valid/Recall@20"] == max(
            row["defaults_valid/Recall@20"],
            yaml.safe_load((out / "tune" / label / "optimization_results.yaml").read_text())["best_value"],
        )
        # every model had the same budget: its defaults and 1 trial
        trials = [d for d in (out / "tune" / label).iterdir() if d.is_dir() and d.name.isdigit()]
        assert len(trials) == 1 and (out / "tune" / label / "defaults" / "metrics.json").exists(), label
    for name in ("EGRA vs LightGCN", "EGRA vs MGCN"):
        tests = result["tests"][name]
        assert {"seeds test/Recall@20", "users test/Recall@20", "users test/NDCG@20"} <= set(tests)
        assert tests["users test/Recall@20"]["n"] > 50  # paired over test users
        assert 0.0 <= tests["users test/Recall@20"]["p_wilcoxon"] <= 1.0
    # EGRA is built on the MGCN it is compared with: its backbone has MGCN's tuned parameters.
    egra_cfg = yaml.safe_load((out / "seeds" / "EGRA" / "seed0" / ".hydra" / "config.yaml").read_text())
    for key, value in result["models"]["MGCN"]["params"].items():
        assert egra_cfg["backbones"]["mgcn"]["model"][key.split(".", 1)[1]] == pytest.approx(value), key
    for label in ("LightGCN", "MGCN", "EGRA"):
        seed0 = yaml.safe_load((out / "seeds" / label / "seed0" / ".hydra" / "overrides.yaml").read_text())
        params = result["models"][label]["params"]
        assert {o for o in seed0 if o.startswith("model.")} == {_override(k, v) for k, v in params.items()}, (
            label
        )
    saved = json.loads((out / "compare.json").read_text())
    assert saved["trials"] == 1 and saved["seeds"] == [0, 1]
    # A second call reuses every study and seed run.
    mtime = (out / "seeds" / "EGRA" / "seed1" / "metrics.json").stat().st_mtime
    compare(out, preset="tiny", trials=1, seeds=(0, 1), extra=extra)
    assert (out / "seeds" / "EGRA" / "seed1" / "metrics.json").stat().st_mtime == mtime
    capsys.readouterr()
    assert report_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "EGRA vs MGCN" in printed and "p (Wilcoxon)" in printed


def _fake_job(d, overrides, valid=0.1):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (d / "metrics.json").write_text(json.dumps({"valid/Recall@20": valid, "status": "ok"}))


def test_stale_studies_and_seed_runs_are_redone(tmp_path, monkeypatch):
    """A study made on another backbone, or seed runs of other parameters, are set aside and redone;
    the defaults win when their valid Recall@20 is at least the study's best."""
    import egra.pipeline.compare as cmp

    calls = []

    def fake_train(args, log_file):
        calls.append(args)
        where = next(a.split("=", 1)[1] for a in args if a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")))
        d = Path(where)
        if any(a.startswith("hparams_search=") for a in args):
            _fake_job(d / "0", [o for o in args if o.startswith("backbones.")])
            (d / "optimization_results.yaml").write_text(
                yaml.safe_dump({"best_params": {"model.beta": 0.5}, "best_value": 0.2})
            )
        elif "-m" in args:
            _fake_job(d / "seed0", [o for o in args if o.startswith(("model.", "backbones."))])
        else:
            _fake_job(d, [], valid=0.25)

    monkeypatch.setattr(cmp, "_train", fake_train)
    e = Entry("EGRA", "model=egra", "tune_egra", backbone=("MGCN", "mgcn"))
    study = tmp_path / "tune" / "EGRA"
    _fake_job(study / "0", ["backbones.mgcn.model.cl_loss=0.1"])
    (study / "optimization_results.yaml").write_text(yaml.safe_dump({"best_params": {}, "best_value": 0.3}))
    chosen = cmp.tune(e, tmp_path, ["data.seed=0"], trials=1, seed=0)
    assert (tmp_path / "tune" / "EGRA.stale1" / "0").is_dir() and len(calls) == 2  # study + defaults
    assert chosen == {
        "params": {},
        "valid/Recall@20": 0.25,
        "defaults_valid/Recall@20": 0.25,
        "chosen": "defaults",
    }
    assert cmp.tune(e, tmp_path, ["data.seed=0"], trials=1, seed=0) == chosen and len(calls) == 2  # reused

    sweep = tmp_path / "seeds" / "EGRA"
    _fake_job(sweep / "seed0", ["model.beta=0.5"])
    cmp.run_seeds(e, {}, tmp_path, ["data.seed=0"], [0])  # the defaults were chosen since
    assert (tmp_path / "seeds" / "EGRA.stale1").is_dir() and len(calls) == 3
    cmp.run_seeds(e, {}, tmp_path, ["data.seed=0"], [0])
    assert len(calls) == 3  # same parameters: reused
