"""`make setup [GPU=1]` (tools/gpu_stack.py): the stack chosen for recorded `nvidia-smi` outputs, the
order of an install (download, then swap), the record that keeps a GPU stack through a later plain
`make test`, and the docs' table. Installs are stubbed: the venv's `python` is a script that keeps
a fake package list and logs every command, so `make` itself runs, with no download."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_stack", ROOT / "tools" / "gpu_stack.py")
gpu_stack = importlib.util.module_from_spec(_spec)
sys.modules["gpu_stack"] = gpu_stack  # dataclasses look their module up there
_spec.loader.exec_module(gpu_stack)
Gpu = gpu_stack.Gpu
CU126, CU128 = (gpu_stack.TORCH_INDEX.format(t) for t in ("cu126", "cu128"))

# `nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader` in its output
# format: (stdout, exit status). The H200 R580 line is what this workplace's H200 reports
# (driver 580.159.03); the other driver versions are typical releases of their branches.
SMI = {
    "a100_r535": ("NVIDIA A100-SXM4-80GB, 8.0, 535.183.06\n" * 2, 0),
    "h200_r550": ("NVIDIA H200, 9.0, 550.127.05\n" * 8, 0),
    "h200_r580": ("NVIDIA H200, 9.0, 580.159.03\n", 0),
    "l4": ("NVIDIA L4, 8.9, 570.133.20\n", 0),
    "v100": ("Tesla V100-SXM2-32GB, 7.0, 535.230.02\n" * 4, 0),
    "none": ("No devices were found\n", 6),
}
# (FAISS_GPU=auto, FAISS_GPU=no): (stack, torch index; None = PyPI's CUDA 13 build)
EXPECTED = {
    "a100_r535": (("cu12-faiss-gpu", CU128), ("cu12-faiss-cpu", CU128)),
    "h200_r550": (("cu12-faiss-gpu", CU128), ("cu12-faiss-cpu", CU128)),
    "h200_r580": (("cu12-faiss-gpu", CU128), ("cu13-faiss-cpu", None)),
    "l4": (("cu12-faiss-gpu", CU128), ("cu12-faiss-cpu", CU128)),
    "v100": (("cu12-faiss-gpu", CU126), ("cu12-faiss-cpu", CU126)),
}


def _fake_smi(tmp_path: Path, name: str) -> Path:
    out, status = SMI[name]
    bindir = tmp_path / "smi-bin"
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{out}EOF\nexit {status}\n")
    smi.chmod(0o755)
    return smi


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_nvidia_smi_outputs_choose_their_stack(tmp_path, name):
    gpus = gpu_stack.query_gpus(str(_fake_smi(tmp_path, name)))
    assert gpus and all(g.capability[0] >= 7 for g in gpus)
    for faiss_gpu, (stack_name, index) in zip(("auto", "no"), EXPECTED[name]):
        stack = gpu_stack.choose(gpus, faiss_gpu)
        assert (stack.name, stack.torch_index) == (stack_name, index), faiss_gpu
        assert stack.requirements == (
            "requirements-gpu.txt" if stack_name.endswith("gpu") else "requirements.txt"
        )
    # What the torch wheel must be: PyTorch's CUDA 12 build by its tag, or PyPI's plain version.
    assert gpu_stack.choose(gpus).torch_version in ("2.13.0+cu128", "2.13.0+cu126")


def test_no_gpu_is_one_line_before_anything(tmp_path):
    with pytest.raises(gpu_stack.SetupError, match=r"nvidia-smi failed \(exit 6: No devices were found\)"):
        gpu_stack.query_gpus(str(_fake_smi(tmp_path, "none")))
    with pytest.raises(
        gpu_stack.SetupError, match=r"nvidia-smi not found\); on a CPU machine run `make setup`"
    ):
        gpu_stack.query_gpus(str(tmp_path / "absent"))
    with pytest.raises(gpu_stack.SetupError, match="cannot read nvidia-smi's line"):
        gpu_stack.parse_smi("NVIDIA H200, [N/A], 580.1\n")


@pytest.mark.parametrize(
    ("gpus", "faiss_gpu", "message"),
    [
        ([Gpu("B200", (10, 0), 580)], "yes", "machine code for compute capability 7.0-9.0 only"),
        ([Gpu("A100", (8, 0), 470)], "auto", "too old for a torch build .* R525"),
        ([Gpu("A100", (8, 0), 470)], "yes", "driver R470 is too old for CUDA 12"),
        (
            [Gpu("K80", (3, 7), 470)],
            "auto",
            "no torch 2.13.0 CUDA build has kernels for compute capability 3.7",
        ),
        ([Gpu("V100", (7, 0), 580), Gpu("B200", (10, 0), 580)], "auto", "compute capability 7.0, 10.0"),
        ([Gpu("A100", (8, 0), 550)], "maybe", "FAISS_GPU=maybe"),
    ],
)
def test_unworkable_combinations_are_refused(gpus, faiss_gpu, message):
    with pytest.raises(gpu_stack.SetupError, match=message):
        gpu_stack.choose(gpus, faiss_gpu=faiss_gpu)


def test_other_generations_and_mixed_machines():
    assert gpu_stack.choose([Gpu("A100", (8, 0), 550), Gpu("H100", (9, 0), 550)]).name == "cu12-faiss-gpu"
    blackwell = gpu_stack.choose([Gpu("B200", (10, 0), 580)])
    assert (blackwell.name, blackwell.torch_index) == ("cu13-faiss-cpu", None)
    assert gpu_stack.choose([Gpu("RTX 5090", (12, 0), 570)]).torch_index == CU128  # 12.8 has sm_120
    pascal = gpu_stack.choose([Gpu("P100", (6, 0), 535)])
    assert (pascal.name, pascal.torch_index) == ("cu12-faiss-cpu", CU126)
    # A given TORCH_INDEX wins, also over PyPI's CUDA 13 build.
    own = gpu_stack.choose([Gpu("H200", (9, 0), 580)], "no", torch_index=CU126)
    assert (own.name, own.torch_index, own.torch_version) == ("cu12-faiss-cpu", CU126, "2.13.0+cu126")


def test_docs_table_is_what_the_script_chooses():
    table = gpu_stack.table()
    rows = [r for r in table.splitlines()[2:]]
    assert len(rows) == len(gpu_stack.TABLE_ROWS)
    hopper_old, hopper_new = rows[2], rows[3]
    assert "R525-R579" in hopper_old and "`cu12-faiss-gpu` (torch: PyTorch cu128; faiss-gpu)" in hopper_old
    assert "`cu12-faiss-cpu` (torch: PyTorch cu128; faiss-cpu)" in hopper_old
    assert "R580+" in hopper_new and "`cu13-faiss-cpu` (torch: PyPI (CUDA 13.0); faiss-cpu)" in hopper_new
    docs = (ROOT / "docs" / "multi-gpu.md").read_text()
    assert table in docs, "docs/multi-gpu.md's GPU table differs from `python tools/gpu_stack.py table`"


def _pins(path: Path) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def test_faiss_pins_agree_and_never_mix():
    core, cpu, gpu = (
        _pins(ROOT / f) for f in ("requirements-core.txt", "requirements.txt", "requirements-gpu.txt")
    )
    assert not [p for p in core if p.startswith("faiss")]
    assert [p for p in cpu if "faiss" in p] == ["faiss-cpu==1.15.1"]
    assert [p for p in gpu if "faiss" in p] == ["faiss-gpu==1.15.1"]
    assert "-r requirements-core.txt" in cpu and "-r requirements-core.txt" in gpu
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'cpu = ["faiss-cpu==1.15.1"]' in pyproject and 'gpu = ["faiss-gpu==1.15.1"]' in pyproject
    assert "torch==2.13.0" in core and '"torch==2.13.0"' in pyproject
    assert f"torch=={gpu_stack.TORCH}" in core
    env = (ROOT / "environment.yml").read_text()
    assert "-r requirements.txt" in env and not re.search(r"^\s*-\s*(torch|faiss)", env, re.M)
    for dist in ("faiss-cpu", "faiss-gpu"):
        assert dist in gpu_stack.FAISS_DISTS


# ----------------------------------------------------------------------------- make, stubbed
STUB = textwrap.dedent(
    """\
    #!{python}
    # A venv's python for tests: pip and the checks act on state.json, every call is logged.
    import json, os, re, sys
    from pathlib import Path
    HERE = Path(__file__).resolve().parents[1]
    state_file, log = HERE / "state.json", HERE / "log.txt"
    state = json.loads(state_file.read_text())
    args = sys.argv[1:]
    status = 0

    def req_file(name):
        for line in Path(name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("-r "):
                req_file(line[3:])
            elif line.startswith(("faiss", "torch")) and line.split("==")[0] not in state:
                state[line.split("==")[0]] = line.split("==")[1]

    if args[:1] == ["-c"]:
        if "egra-inspect" in args[1]:
            print(json.dumps({{k: v for k, v in state.items() if k.startswith(("torch", "faiss"))}}))
        elif "egra-verify" in args[1]:
            faiss = [k for k in state if k.startswith("faiss")]
            status = 0 if len(faiss) == 1 and "torch" in state else 1
    elif args[:3] == ["-m", "pip", "download"]:
        if os.environ.get("STUB_FAIL_DOWNLOAD"):
            status = 1
        else:
            wheels = Path(args[args.index("-d") + 1])
            for a in args:
                if a.startswith("torch=="):
                    index = args[args.index("--index-url") + 1] if "--index-url" in args else ""
                    tag = "+" + index.rstrip("/").rsplit("/", 1)[-1] if index else ""
                    (wheels / f"torch-{{a[7:]}}{{tag}}-cp311-cp311-linux_x86_64.whl").touch()
    elif args[:3] == ["-m", "pip", "uninstall"]:
        for a in args[3:]:
            state.pop(a, None)
    elif args[:3] == ["-m", "pip", "install"]:
        it = iter(args[3:])
        for a in it:
            if a == "-r":
                req_file(next(it))
            elif a.endswith(".whl"):
                name, version = Path(a).name.split("-")[:2]
                state[name] = version
            elif a.startswith("faiss") and "==" in a:
                state[a.split("==")[0]] = a.split("==")[1]
            elif a == "-e":
                state["egra"] = next(it)
    state_file.write_text(json.dumps(state))
    with open(log, "a") as f:
        f.write(" ".join(a.splitlines()[0] for a in args) + "\\n")
        f.write("STATE " + " ".join(sorted(k for k in state if k.startswith(("torch", "faiss")))) + "\\n")
    sys.exit(status)
    """
)


def _stub_venv(tmp_path: Path, state: dict[str, str], record: str | None) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(STUB.format(python=sys.executable))
    python.chmod(0o755)
    (venv / "state.json").write_text(json.dumps(state))
    (venv / "log.txt").write_text("")
    if record is not None:
        (venv / ".egra-stack").write_text(record + "\n")
        (venv / ".egra-installed" if record == "cpu" else venv / ".egra-installed-gpu").touch()
    return venv


def _make(venv: Path, smi: Path | None, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    path = os.environ["PATH"] if smi is None else f"{smi.parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, **env_extra}
    cmd = ["make", "-s", *args, f"VENV={venv}", f"PYTHON={sys.executable}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _log(venv: Path) -> list[str]:
    return (venv / "log.txt").read_text().splitlines()


def _state(venv: Path) -> dict[str, str]:
    return json.loads((venv / "state.json").read_text())


def _calls(log: list[str]) -> list[str]:
    return [line for line in log if not line.startswith("STATE ")]


def test_gpu_setup_downloads_first_and_survives_a_later_make_test(tmp_path):
    venv = _stub_venv(tmp_path, {"torch": "2.13.0+cpu", "faiss-cpu": "1.15.1"}, record="cpu")
    proc = _make(venv, _fake_smi(tmp_path, "h200_r550"), "setup", "GPU=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = _calls(_log(venv))
    first_removal = next(i for i, c in enumerate(calls) if "pip uninstall" in c)
    downloads = [i for i, c in enumerate(calls) if "pip download" in c]
    assert downloads and max(downloads) < first_removal  # download, then swap
    assert "--index-url " + CU128 in calls[downloads[0]]
    assert "faiss-cpu" in calls[first_removal]
    # torch was there after every command; FAISS was missing only between uninstall and install
    states = [s.split()[1:] for s in _log(venv) if s.startswith("STATE ")]
    assert all("torch" in s for s in states)
    gaps = [i for i, s in enumerate(states) if not any(p.startswith("faiss") for p in s)]
    assert gaps == [first_removal] and "--no-index" in calls[first_removal + 1]
    assert _state(venv)["torch"] == "2.13.0+cu128" and "faiss-cpu" not in _state(venv)
    assert _state(venv)["faiss-gpu"] == "1.15.1"
    record = gpu_stack.read_record(venv / ".egra-stack")
    assert record["stack"] == "cu12-faiss-gpu" and record["faiss_gpu"] == "auto"
    assert (venv / ".egra-installed-gpu").exists() and not (venv / ".egra-installed").exists()

    # A later plain `make test` (no GPU=, no GPUS=) keeps the GPU stack: it only runs pytest.
    (venv / "log.txt").write_text("")
    proc = _make(venv, None, "test", "ARGS=-k nothing")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _calls(_log(venv)) == ["-m pytest -q -k nothing"]
    assert (venv / ".egra-installed-gpu").exists() and not (venv / ".egra-installed").exists()
    assert gpu_stack.read_record(venv / ".egra-stack")["stack"] == "cu12-faiss-gpu"
    assert "pip" not in _make(venv, None, "-n", "train").stdout  # nor does `make train`


def test_a_gpu_venv_from_before_the_record_also_stays(tmp_path):
    venv = _stub_venv(tmp_path, {"torch": "2.13.0+cu128", "faiss-gpu-cu12": "1.14.1.post1"}, None)
    (venv / ".egra-installed-gpu").touch()  # what the GPU setup left before it wrote a record
    proc = _make(venv, None, "test", "ARGS=-x")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _calls(_log(venv)) == ["-m pytest -q -x"] and _state(venv)["faiss-gpu-cu12"]


def test_a_failed_download_changes_nothing(tmp_path):
    venv = _stub_venv(tmp_path, {"torch": "2.13.0+cpu", "faiss-cpu": "1.15.1"}, record="cpu")
    proc = _make(venv, _fake_smi(tmp_path, "h200_r580"), "setup", "GPU=1", STUB_FAIL_DOWNLOAD="1")
    assert proc.returncode != 0
    assert "pip download" in proc.stderr and "failed" in proc.stderr
    assert not [c for c in _calls(_log(venv)) if "uninstall" in c or "pip install -q -r" in c]
    assert _state(venv) == {"torch": "2.13.0+cpu", "faiss-cpu": "1.15.1"}
    assert (venv / ".egra-stack").read_text() == "cpu\n" and not (venv / ".egra-installed-gpu").exists()


def test_faiss_gpu_no_is_remembered_and_gpu_0_goes_back_to_cpu(tmp_path):
    venv = _stub_venv(tmp_path, {"torch": "2.13.0+cu128", "faiss-gpu": "1.15.1"}, record="cu12-faiss-gpu")
    smi = _fake_smi(tmp_path, "h200_r580")
    proc = _make(venv, smi, "setup", "FAISS_GPU=no")  # re-runs the GPU install: the choice changed
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _state(venv)["torch"] == "2.13.0" and _state(venv)["faiss-cpu"] == "1.15.1"
    assert "faiss-gpu" not in _state(venv)
    record = gpu_stack.read_record(venv / ".egra-stack")
    assert (record["stack"], record["faiss_gpu"]) == ("cu13-faiss-cpu", "no")
    # A later change of the requirements re-runs the install with the remembered choice.
    (venv / "log.txt").write_text("")
    os.utime(venv / ".egra-installed-gpu", (0, 0))
    assert _make(venv, smi, "setup").returncode == 0
    assert gpu_stack.read_record(venv / ".egra-stack")["stack"] == "cu13-faiss-cpu"
    assert not [c for c in _calls(_log(venv)) if "download" in c or "uninstall" in c]  # nothing to swap

    # GPU=0: back to the CPU stack; faiss-cpu is downloaded before faiss-gpu goes.
    venv2 = _stub_venv(tmp_path / "b", {"torch": "2.13.0+cu128", "faiss-gpu": "1.15.1"}, "cu12-faiss-gpu")
    proc = _make(venv2, None, "setup", "GPU=0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = _calls(_log(venv2))
    removal = next(i for i, c in enumerate(calls) if "pip uninstall" in c)
    assert any("pip download" in c and "faiss-cpu==1.15.1" in c for c in calls[:removal])
    assert _state(venv2)["faiss-cpu"] == "1.15.1" and "faiss-gpu" not in _state(venv2)
    assert gpu_stack.read_record(venv2 / ".egra-stack")["stack"] == "cpu"
    assert (venv2 / ".egra-installed").exists() and not (venv2 / ".egra-installed-gpu").exists()


def test_make_setup_gpu_fails_before_installing_anything_without_a_gpu(tmp_path):
    venv = tmp_path / "venv"
    proc = _make(venv, _fake_smi(tmp_path, "none"), "setup", "GPU=1")
    assert proc.returncode != 0
    assert "error: make setup GPU=1: nvidia-smi failed (exit 6: No devices were found)" in proc.stderr
    assert not venv.exists()  # no venv, no pip run


def test_install_check_rejects_a_torch_without_the_gpus_architecture(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Tesla V100-SXM2-32GB")
    # torch's CUDA 12.8 build: Turing and newer
    arch = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (7, 0))
    assert gpu_stack.verify_here("cu12-faiss-cpu") == 1
    err = capsys.readouterr().err
    assert "none of which runs on GPU 0 (Tesla V100-SXM2-32GB, compute capability 7.0)" in err
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cu126" in err
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (8, 9))  # sm_86 code runs on 8.9
    assert gpu_stack.verify_here("cu12-faiss-cpu") == 0
    monkeypatch.setattr(torch.version, "cuda", None)
    assert gpu_stack.verify_here("cu12-faiss-cpu") == 1
    assert "is a CPU build" in capsys.readouterr().err
    assert gpu_stack.verify_here("cpu") == 0  # this venv: faiss-cpu alone
