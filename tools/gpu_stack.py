"""`make setup GPU=1`: pick a CUDA torch and a FAISS that work together on this machine's GPUs.

Standard library only (it runs before the venv exists). ``check`` inspects the GPUs with
``nvidia-smi`` and fails with a one-line message, before anything is installed, when there
is no usable NVIDIA GPU or driver. ``install --python <venv python>`` runs the plan;
``plan`` prints it.

Two stacks (see docs/multi-gpu.md, "Install"):

- ``cu12-faiss-gpu``: every GPU within faiss-gpu-cu12's documented compute capabilities
  (7.0-8.9): torch 2.13.0 built for CUDA 12 from PyTorch's index, then
  ``requirements-gpu.txt`` (faiss-gpu-cu12, same CUDA major as torch).
- ``cu13-faiss-cpu``: other GPUs (e.g. Hopper 9.0, Blackwell): PyPI's torch 2.13.0 (a CUDA
  13.0 build) and ``requirements.txt`` (faiss-cpu; kNN graphs are built on the CPU). No
  faiss-gpu wheel on PyPI supports these GPUs or CUDA 13.

Either way the other FAISS package is uninstalled first: both provide the module ``faiss``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: faiss-gpu-cu12 1.14.1.post1's documented compute capabilities (its PyPI description).
FAISS_GPU_CC = (7.0, 8.9)
#: CUDA 13 supports Turing (7.5) and newer.
CUDA13_MIN_CC = 7.5
#: Minimum driver branches: CUDA 13.0 needs R580; CUDA 12.x runs on R525+ (minor-version compatibility).
CUDA13_MIN_DRIVER = 580
CUDA12_MIN_DRIVER = 525
TORCH_CU12_INDEX = "https://download.pytorch.org/whl/cu128"
TORCH = "torch==2.13.0"


class SetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: float
    driver_major: int


def query_gpus(smi: str = "nvidia-smi") -> list[Gpu]:
    cmd = [smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except FileNotFoundError:
        raise SetupError(
            "make setup GPU=1: no NVIDIA driver here (nvidia-smi not found); on a CPU machine run `make setup`"
        ) from None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise SetupError(
            f"make setup GPU=1: nvidia-smi failed ({err}); is the NVIDIA driver loaded?"
        ) from None
    gpus = []
    for line in out.strip().splitlines():
        name, cc, driver = (part.strip() for part in line.rsplit(",", 2))
        gpus.append(Gpu(name, float(cc), int(driver.split(".")[0])))
    if not gpus:
        raise SetupError("make setup GPU=1: nvidia-smi lists no GPU; on a CPU machine run `make setup`")
    return gpus


def plan(gpus: list[Gpu], faiss_gpu: str = "auto", torch_index: str = TORCH_CU12_INDEX) -> tuple[str, list]:
    """(stack name, pip argument lists) for these GPUs; SetupError when none fits."""
    lo, hi = min(g.compute_capability for g in gpus), max(g.compute_capability for g in gpus)
    driver = min(g.driver_major for g in gpus)
    names = ", ".join(sorted({f"{g.name} (sm {g.compute_capability})" for g in gpus}))
    in_faiss_range = FAISS_GPU_CC[0] <= lo and hi <= FAISS_GPU_CC[1]
    if faiss_gpu == "yes" and not in_faiss_range:
        raise SetupError(f"FAISS_GPU=1: faiss-gpu-cu12 supports compute capability 7.0-8.9, not {names}")
    if in_faiss_range and faiss_gpu != "no":
        if driver < CUDA12_MIN_DRIVER:
            raise SetupError(
                f"driver R{driver} is too old for CUDA 12 (needs R{CUDA12_MIN_DRIVER}+): {names}"
            )
        return "cu12-faiss-gpu", [
            ["uninstall", "-y", "faiss-cpu", "faiss-gpu-cu12", "torch"],
            ["install", TORCH, "--index-url", torch_index],
            ["install", "-r", "requirements-gpu.txt", "-r", "requirements-dev.txt"],
            ["install", "--no-deps", "-e", "."],
        ]
    if lo < CUDA13_MIN_CC:
        raise SetupError(f"torch 2.13's CUDA 13 build needs compute capability 7.5+, not {names}")
    if driver < CUDA13_MIN_DRIVER:
        raise SetupError(f"driver R{driver} is too old for CUDA 13 (needs R{CUDA13_MIN_DRIVER}+): {names}")
    return "cu13-faiss-cpu", [
        ["uninstall", "-y", "faiss-cpu", "faiss-gpu-cu12", "torch"],
        ["install", "-r", "requirements.txt", "-r", "requirements-dev.txt"],
        ["install", "--no-deps", "-e", "."],
    ]


# Run in the venv after installing: the torch must be a CUDA build that sees the GPU, and
# exactly one FAISS package may own the module.
def _verify(python: str) -> None:
    code = (
        "import importlib.metadata as md, sys, torch, faiss\n"
        "def has(d):\n"
        "    try: md.version(d); return True\n"
        "    except md.PackageNotFoundError: return False\n"
        "owners = [d for d in ('faiss-cpu', 'faiss-gpu-cu12') if has(d)]\n"
        "ok = torch.version.cuda is not None and torch.cuda.is_available() and len(owners) == 1\n"
        "print(f'torch {torch.__version__} (CUDA {torch.version.cuda}, GPU: {torch.cuda.is_available()}), "
        "faiss {faiss.__version__} from {owners}, faiss GPUs: {faiss.get_num_gpus()}')\n"
        "sys.exit(0 if ok else 1)\n"
    )
    if subprocess.run([python, "-c", code], cwd=ROOT).returncode != 0:
        raise SetupError("the installed stack failed its check (see the line above)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["check", "plan", "install"])
    ap.add_argument("--python", help="the venv's python (install)")
    ap.add_argument("--faiss-gpu", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--torch-index", default=TORCH_CU12_INDEX, help="PyTorch index of the CUDA 12 build")
    ap.add_argument("--nvidia-smi", default="nvidia-smi")
    args = ap.parse_args(argv)
    try:
        gpus = query_gpus(args.nvidia_smi)
        stack, steps = plan(gpus, args.faiss_gpu, args.torch_index)
        print(f"GPU stack: {stack} for {len(gpus)} GPU(s)", flush=True)
        if args.action == "plan":
            for step in steps:
                print("pip " + " ".join(step))
        if args.action != "install":
            return 0
        if not args.python:
            raise SetupError("install needs --python <venv python>")
        for step in steps:
            quiet = ["-q"] if step[0] == "install" else []
            # An uninstall of a package that is not there is fine; a failed install is not.
            subprocess.run([args.python, "-m", "pip", *step, *quiet], cwd=ROOT, check=step[0] == "install")
        _verify(args.python)
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(err.cmd[1:])} failed (exit {err.returncode})", file=sys.stderr)
        return 1
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
