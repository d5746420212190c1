"""bench/gpu_check: the plan fits 8 minutes, a dry run writes nothing, a CPU machine writes
nothing, results are saved after every section, and a section past its budget is killed with
every process it started. The sections themselves need a GPU; a smoke run checks their code."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)

EXPECTED = {
    "data", "spt_200k_64", "spt_4096", "fp32_epochs", "bf16_mixed", "fp16_mixed",
    "gpu_grads", "self_graph", "freedom", "resume", "ddp1",
}  # fmt: skip


def _sh(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_prints_every_section_with_budgets_within_8_minutes_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu.json"
    before = sorted((ROOT / "bench" / "results").iterdir())
    proc = _sh("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [
        ln.split()
        for ln in proc.stdout.splitlines()
        if ln.startswith("  ") and not ln.strip().startswith("total")
    ]
    budgets = {r[0]: int(r[1]) for r in rows}
    assert set(budgets) == EXPECTED
    assert sum(budgets.values()) <= 480
    assert "FAISS on the CPU here" in proc.stdout and "20k x 4096" in proc.stdout
    assert not out.exists() and sorted((ROOT / "bench" / "results").iterdir()) == before
    # Sized for the FAISS selected: with FAISS on the GPU the big exact search is 63k x 4096.
    on_gpu = {s.name: s for s in gpu_check.sections(faiss_gpu=True)}
    assert "63k x 4096" in on_gpu["spt_4096"].what
    assert sum(s.budget_s for s in on_gpu.values()) <= gpu_check.TOTAL_BUDGET_S


def test_no_cuda_device_means_nothing_run_and_nothing_written(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    out = tmp_path / "gpu.json"
    default = gpu_check.DEFAULT_OUT
    before = default.stat().st_mtime_ns if default.exists() else None
    assert gpu_check.main(["--out", str(out)]) == 1
    assert gpu_check.main([]) == 1  # the default path (bench/results/gpu.json) is not touched either
    assert "no CUDA device visible to torch" in capsys.readouterr().err
    assert not out.exists() and (default.stat().st_mtime_ns if default.exists() else None) == before


def test_results_are_written_after_every_section(tmp_path, monkeypatch):
    out = tmp_path / "gpu.json"
    seen_before = []

    def fake_child(name, limit, shared, smoke, faiss_gpu):
        # What the results file holds when this section starts.
        seen_before.append(sorted(json.loads(out.read_text())["sections"]) if out.exists() else [])
        return {"ok": name != "freedom", "seconds": 0.1, "error": "boom"} | (
            {} if name == "freedom" else {"n": 1}
        )

    monkeypatch.setattr(gpu_check, "_child", fake_child)
    monkeypatch.setattr(gpu_check, "_headline", lambda name, rec: "")
    status = gpu_check.main(
        ["--smoke", "--only", "data", "freedom", "resume", "--out", str(out), "--work", str(tmp_path)]
    )
    assert status == 1  # one section failed
    assert seen_before == [[], ["data"], ["data", "freedom"]]
    result = json.loads(out.read_text())
    assert result["complete"] and not result["all_ok"] and result["smoke"]
    assert list(result["plan"]) == ["data", "freedom", "resume"]


def test_a_section_past_its_budget_is_killed_with_its_children():
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('grandchild', p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    t = time.perf_counter()
    status, out, timed_out = gpu_check.run_in_group([sys.executable, "-c", code], timeout=3)
    assert timed_out and status is None and time.perf_counter() - t < 30
    pid = int(out.split("grandchild", 1)[1].split()[0])
    status_file = Path(f"/proc/{pid}/status")
    # Gone, or a zombie waiting for a reaper: not running either way.
    assert not status_file.exists() or "State:\tZ" in status_file.read_text()


@pytest.mark.slow
def test_smoke_runs_sections_in_their_own_processes_and_prints_the_table(tmp_path):
    out = tmp_path / "smoke.json"
    proc = _sh("--smoke", "--only", "data", "spt_200k_64", "--out", str(out), "--work", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] and result["all_ok"] and set(result["sections"]) == {"data", "spt_200k_64"}
    assert result["sections"]["spt_200k_64"]["every_row_has_10"]
    assert result["environment"]["faiss_device"] == "cpu"
    lines = proc.stdout.splitlines()
    table = lines[next(i for i, ln in enumerate(lines) if ln.startswith("section ")) :]
    assert table[0].split()[:3] == ["section", "status", "used/budget"]
    assert table[1].split()[:2] == ["data", "ok"] and table[2].split()[:2] == ["spt_200k_64", "ok"]
    assert table[3].startswith("total ")
