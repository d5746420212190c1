"""`egra-compare`: equal tuning budget per model, seeds, paired tests; egra-report renders it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from egra.cli.report import main as report_main
from egra.pipeline.compare import Entry, backbone_overrides, compare, paired_tests


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
    entry = Entry("EGRA", "egra_small", "tune_egra", backbone=("MGCN", "mgcn"))
    assert backbone_overrides(entry, tuned) == [
        "backbones.mgcn.model.cl_loss=0.02",
        "backbones.mgcn.model.n_ui_layers=3",
    ]
    assert backbone_overrides(Entry("MGCN", "mgcn_small", "tune_mgcn"), tuned) == []
    with pytest.raises(ValueError, match="list MGCN before it"):
        backbone_overrides(entry, {})


@pytest.mark.slow
def test_compare_on_tiny_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cmp"
    extra = ["trainer.max_epochs=2", "backbones.mgcn.max_epochs=2", "threads=1", "logger=none"]
    result = compare(out, preset="tiny", trials=2, seeds=(0, 1), extra=extra)
    assert set(result["models"]) == {"LightGCN", "MGCN", "EGRA"}
    for label, row in result["models"].items():
        assert len(row["test/Recall@20"]["per_seed"]) == 2, label
        assert row["params"], label  # the study's best parameters were re-run
        # every model had the same number of trials
        trials = [d for d in (out / "tune" / label).iterdir() if d.is_dir() and d.name.isdigit()]
        assert len(trials) == 2, label
    for name in ("EGRA vs LightGCN", "EGRA vs MGCN"):
        tests = result["tests"][name]
        assert {"seeds test/Recall@20", "users test/Recall@20", "users test/NDCG@20"} <= set(tests)
        assert tests["users test/Recall@20"]["n"] > 50  # paired over test users
        assert 0.0 <= tests["users test/Recall@20"]["p_wilcoxon"] <= 1.0
    # EGRA is built on the MGCN it is compared with: its backbone has MGCN's tuned parameters.
    egra_cfg = yaml.safe_load((out / "seeds" / "EGRA" / "seed0" / ".hydra" / "config.yaml").read_text())
    for key, value in result["models"]["MGCN"]["params"].items():
        assert egra_cfg["backbones"]["mgcn"]["model"][key.split(".", 1)[1]] == pytest.approx(value), key
    saved = json.loads((out / "compare.json").read_text())
    assert saved["trials"] == 2 and saved["seeds"] == [0, 1]
    # A second call reuses every study and seed run.
    mtime = (out / "seeds" / "EGRA" / "seed1" / "metrics.json").stat().st_mtime
    compare(out, preset="tiny", trials=2, seeds=(0, 1), extra=extra)
    assert (out / "seeds" / "EGRA" / "seed1" / "metrics.json").stat().st_mtime == mtime
    capsys.readouterr()
    assert report_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "EGRA vs MGCN" in printed and "p (Wilcoxon)" in printed
