"""`make setup GPU=1` (tools/gpu_stack.py): the stack it picks per GPU, and a clean refusal without one."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_stack", ROOT / "tools" / "gpu_stack.py")
gpu_stack = importlib.util.module_from_spec(_spec)
sys.modules["gpu_stack"] = gpu_stack  # dataclasses look their module up there
_spec.loader.exec_module(gpu_stack)
Gpu = gpu_stack.Gpu


def _installs(steps) -> list[str]:
    return [arg for step in steps if step[0] == "install" for arg in step[1:]]


def test_hopper_gets_cuda13_torch_with_faiss_cpu():
    stack, steps = gpu_stack.plan([Gpu("NVIDIA H200", 9.0, 580)])
    assert stack == "cu13-faiss-cpu"
    assert steps[0][:2] == ["uninstall", "-y"] and "faiss-gpu-cu12" in steps[0]
    assert "requirements.txt" in _installs(steps) and "requirements-gpu.txt" not in _installs(steps)


def test_ampere_gets_cuda12_torch_with_faiss_gpu_never_faiss_cpu():
    stack, steps = gpu_stack.plan([Gpu("NVIDIA A100", 8.0, 550), Gpu("NVIDIA A100", 8.0, 550)])
    assert stack == "cu12-faiss-gpu"
    assert "faiss-cpu" in steps[0]  # removed before faiss-gpu goes in
    assert ["install", "torch==2.13.0", "--index-url", gpu_stack.TORCH_CU12_INDEX] in steps
    assert "requirements-gpu.txt" in _installs(steps) and "requirements.txt" not in _installs(steps)
    # Opting out of GPU FAISS gives the CUDA 13 stack (the driver must allow it).
    assert gpu_stack.plan([Gpu("NVIDIA A100", 8.0, 580)], faiss_gpu="no")[0] == "cu13-faiss-cpu"


@pytest.mark.parametrize(
    "gpus, faiss_gpu, message",
    [
        ([Gpu("A100", 8.0, 550), Gpu("H100", 9.0, 580)], "auto", "too old for CUDA 13"),
        ([Gpu("H200", 9.0, 580)], "yes", "supports compute capability 7.0-8.9"),
        ([Gpu("V100", 7.0, 535)], "no", "needs compute capability 7.5+"),
        ([Gpu("A100", 8.0, 470)], "auto", "too old for CUDA 12"),
    ],
)
def test_unworkable_combinations_are_refused(gpus, faiss_gpu, message):
    with pytest.raises(gpu_stack.SetupError, match=message):
        gpu_stack.plan(gpus, faiss_gpu=faiss_gpu)


def _fake_smi(tmp_path: Path, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{body}\n")
    smi.chmod(0o755)
    return smi


def test_nvidia_smi_is_parsed_and_its_absence_is_one_clear_line(tmp_path):
    smi = _fake_smi(tmp_path, 'echo "NVIDIA H200, 9.0, 580.65.06"; echo "NVIDIA H200, 9.0, 580.65.06"')
    assert gpu_stack.query_gpus(str(smi)) == [Gpu("NVIDIA H200", 9.0, 580)] * 2
    with pytest.raises(
        gpu_stack.SetupError, match=r"nvidia-smi not found\); on a CPU machine run `make setup`"
    ):
        gpu_stack.query_gpus(str(tmp_path / "absent"))


def test_make_setup_gpu_fails_before_installing_anything_without_a_gpu(tmp_path):
    # A failing nvidia-smi first on PATH stands for "no GPU" even on a machine that has one.
    smi = _fake_smi(tmp_path, "exit 9")
    venv = tmp_path / "venv"
    env = {**os.environ, "PATH": f"{smi.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["make", "-s", "setup", "GPU=1", f"VENV={venv}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "error: make setup GPU=1: nvidia-smi failed" in proc.stderr
    assert not venv.exists()  # no venv, no pip run


def _pins(path: Path) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def test_faiss_pins_agree_and_never_mix():
    core, cpu, gpu = (
        _pins(ROOT / f) for f in ("requirements-core.txt", "requirements.txt", "requirements-gpu.txt")
    )
    assert not [p for p in core if p.startswith("faiss")]
    assert [p for p in cpu if "faiss" in p] == ["faiss-cpu==1.15.1"]
    assert [p for p in gpu if "faiss" in p] == ["faiss-gpu-cu12==1.14.1.post1"]
    assert "-r requirements-core.txt" in cpu and "-r requirements-core.txt" in gpu
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert (
        'cpu = ["faiss-cpu==1.15.1"]' in pyproject and 'gpu = ["faiss-gpu-cu12==1.14.1.post1"]' in pyproject
    )
    assert "torch==2.13.0" in core and '"torch==2.13.0"' in pyproject
    env = (ROOT / "environment.yml").read_text()
    assert "-r requirements.txt" in env and not re.search(r"^\s*-\s*(torch|faiss)", env, re.M)
