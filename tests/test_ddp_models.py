"""LGMRec and DA-MRS under Lightning's real DDP launcher (``trainer=ddp``: the command re-runs
per rank), 2 gloo ranks on the CPU: every stage runs on both ranks (DA-MRS's graph artifacts
built once), the fit finishes and only rank 0 reports."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("model,n_graphs", [("lgmrec", 0), ("damrs", 3)])
def test_model_under_ddp_launcher(tmp_path, model, n_graphs):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        f"model={model}",
        "data.preset=tiny",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=2",
        "threads=1",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")] == [Path("run/metrics.json")]
    assert log.count("results: ") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["epochs_run"] == 2
    assert all(math.isfinite(metrics[f"test/{m}@20"]) for m in ("Recall", "NDCG"))
    built = re.findall(r"wrote graphs artifact (\S+)", log)
    assert len(built) == len(set(built)) == n_graphs  # one rank builds each graph
