"""The whole EGRA pipeline under Lightning's real DDP launcher (what ``make train GPUS=2`` runs).

``trainer=ddp`` re-runs the command once per extra rank, so every rank runs every stage:
pretrain (MGCN trained by both ranks together), graph (``S^m``, ``S^pt``), fit, evaluate.
Started in a subprocess with a timeout: a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from egra.pipeline.evaluate import load_module
from egra.pipeline.fit import build_module
from egra.pipeline.graph import load_named
from egra.training.module import GraphMismatchError


@pytest.mark.slow
def test_egra_pipeline_under_ddp_launcher_completes_and_evaluates_like_one_process(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        "experiment=egra_tiny",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.enable_progress_bar=false",
        "backbones.mgcn.max_epochs=2",
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

    # One metrics.json, one table: only rank 0 reports.
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")] == [Path("run/metrics.json")]
    assert log.count("results: ") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "EGRA" and metrics["epochs_run"] == 2

    # Each artifact built once, by one rank: S^m of both modalities, the backbone, S^pt.
    art = tmp_path / "artifacts"
    built = re.findall(r"wrote (\w+) artifact (\S+)", log)
    assert sorted(kind for kind, _ in built) == ["embeddings", "graphs", "graphs", "graphs"], built
    assert len({path for _, path in built}) == 4
    assert len([p for p in (art / "graphs").iterdir() if not p.name.startswith(".")]) == 3
    assert len([p for p in (art / "embeddings").iterdir() if not p.name.startswith(".")]) == 1
    assert not [p for p in art.rglob(".*") if p.is_dir()]  # no temp or work directories left

    # The same weights evaluated in one process give the same numbers (every user once).
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    L.seed_everything(0)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    best = run_dir / "checkpoints" / "best.ckpt"
    module = load_module(cfg, dm, best)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    single = {
        **trainer.validate(module, datamodule=dm, verbose=False)[0],
        **trainer.test(module, datamodule=dm, verbose=False)[0],
    }
    keys = [k for k in metrics if k.startswith(("valid/", "test/"))]
    assert "test/Recall@20" in keys and set(keys) == set(single)
    for key in keys:
        assert single[key] == pytest.approx(metrics[key], abs=1e-6), key

    # The checkpoint names its graphs: a different one or a missing one is an error.
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    names = ckpt["egra_graphs"]
    assert set(names) == {"S^m/image", "S^m/text", "S^pt"}
    other = {**names, "S^pt": {"artifact": names["S^pt"]["artifact"], "sha256": "0" * 64}}
    with pytest.raises(GraphMismatchError, match="S\\^pt differs"):
        build_module(cfg, dm, module.net, other).on_load_checkpoint(ckpt)
    with pytest.raises(GraphMismatchError, match="does not have"):
        build_module(cfg, dm, module.net, {k: v for k, v in names.items() if k != "S^pt"}).on_load_checkpoint(
            ckpt
        )
    with pytest.raises(ValueError, match="differs from the one the checkpoint"):
        load_named(cfg.paths.artifact_dir, other)
    missing = {"S^pt": {"artifact": "0123456789abcdef", "sha256": names["S^pt"]["sha256"]}}
    with pytest.raises(FileNotFoundError, match="not in"):
        load_named(cfg.paths.artifact_dir, missing)
