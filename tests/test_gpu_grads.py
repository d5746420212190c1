"""bench/gpu_grads.py: skips cleanly without CUDA; its pieces run on the CPU; the full check on a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_grads", ROOT / "bench" / "gpu_grads.py")
gpu_grads = importlib.util.module_from_spec(_spec)
sys.modules["gpu_grads"] = gpu_grads
_spec.loader.exec_module(gpu_grads)


def _run(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env_extra or {})}
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_grads.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run("--out", str(out), env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gpu_grads: skipped, no CUDA device"
    assert not out.exists()


def test_its_pieces_run_on_the_cpu():
    # The GPU-only script's model, batch and evaluation code, exercised here so a GPU run
    # does not find its bugs first.
    models = gpu_grads.models_on(gpu_grads.make_data(60, 50))
    batch = torch.as_tensor(np.random.default_rng(0).integers(0, 50, size=(3, 32)))
    for net in models.values():
        loss, grads = gpu_grads.loss_and_grads(net, batch)
        loss16, grads16 = gpu_grads.loss_and_grads(net, batch, autocast=torch.bfloat16)
        assert np.isfinite(loss) and loss16 == pytest.approx(loss, rel=3e-2)
        assert sorted(grads) == sorted(grads16) and grads
    batches, chunk = gpu_grads.eval_batches(n_items=5000, n_users=30)
    assert sum(b["users"].numel() for b in batches) == 30
    module = gpu_grads.RecommenderModule(
        gpu_grads.BPRMF(n_users=30, n_items=5000), optimizer=torch.optim.Adam
    )
    sums, _ = gpu_grads.eval_sums(module, "cpu", batches)
    assert sums["#users"] == 30 and 0 <= sums["Recall@20"] <= 30


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu(tmp_path):
    proc = _run("--out", str(tmp_path / "gpu.json"), "--items", "200000", "--eval-users", "2000")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
