"""`make setup [GPU=1]`: install a torch and a FAISS that work together on this machine, and remember which.

Standard library only (it runs before the venv exists). Stacks:

- ``cpu``: ``requirements.txt`` (faiss-cpu) with the pinned torch as pip finds it.
- ``cu12-faiss-gpu``: torch 2.13.0 built for CUDA 12 from PyTorch's index (``cu126`` for GPUs
  below compute capability 7.5, which the later CUDA 12 builds dropped, else ``cu128``) and
  ``requirements-gpu.txt``: faiss-gpu 1.15.1, Meta's CUDA 12 wheel, whose library carries
  machine code for 7.0, 7.5, 8.0, 8.6, 8.9 and 9.0 (Volta to Hopper) plus PTX for 9.0.
- ``cu12-faiss-cpu``: the same CUDA 12 torch with ``requirements.txt`` (kNN graphs on the CPU).
- ``cu13-faiss-cpu``: PyPI's torch 2.13.0 (a CUDA 13.0 build; driver R580+, 7.5 and newer) with
  ``requirements.txt``. No FAISS GPU wheel installs beside it: faiss-gpu is CUDA 12 only, and
  faiss-gpu-cuvs (CUDA 13) needs CUDA runtime 13.2+ where torch 2.13.0 pins 13.0.

``FAISS_GPU=auto`` (default) takes ``cu12-faiss-gpu`` when faiss-gpu has machine code for every
GPU and a CUDA 12 torch build covers them; otherwise, and with ``FAISS_GPU=no``, the CUDA 13
stack where the GPUs and driver allow it, else ``cu12-faiss-cpu``. ``docs/multi-gpu.md`` holds
the table (``python tools/gpu_stack.py table`` prints it; a test compares the two).

Actions: ``check`` (inspect the GPUs, choose, print; fails with one line, before anything is
installed, when no stack fits), ``plan`` (also the pip steps), ``install --python <venv
python> --record <file>`` (GPU stack, or ``--cpu``), ``table``.

Installing never leaves the venv without torch or FAISS: whatever replaces an installed package
(the CUDA torch, the FAISS package) is downloaded first; only then is the other FAISS package
removed (both provide the module ``faiss``, never install both) and the downloaded wheels
installed from disk (pip replaces torch in one step and restores it if that fails). After the
install the stack is checked in the venv: torch must be a CUDA build with kernels for every
GPU (``torch.cuda.get_arch_list()`` against each device's compute capability), exactly one
FAISS package present and, for faiss-gpu, kernels for every GPU. Only then is the record
file written (the stack's name on its first line): later plain ``make test``/``make train``
read it and keep the stack.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/{}"
#: Machine code (sm numbers) of torch's CUDA builds as PyTorch's release matrix lists them
#: since 2.11 (cu126 keeps Maxwell to Volta; cu128 and PyPI's CUDA 13.0 build start at Turing).
#: The install check compares the installed build's own list with the GPUs.
TORCH_BUILDS = {
    "cu126": (50, 60, 70, 75, 80, 86, 90),
    "cu128": (75, 80, 86, 90, 100, 120),
    "cu130": (75, 80, 86, 90, 100, 120),
}
#: faiss-gpu 1.15.1's machine code, read from its wheel's libfaiss.so (plus PTX for 9.0).
FAISS_GPU_SASS = (70, 75, 80, 86, 89, 90)
#: Oldest driver branch per CUDA major: 12.x runs on R525+ (minor-version compatibility),
#: 13.0 needs R580.
CUDA12_MIN_DRIVER, CUDA13_MIN_DRIVER = 525, 580
#: Every distribution that provides the module ``faiss``: at most one may be installed.
FAISS_DISTS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu-cuvs")
GPU_REQUIREMENTS, CPU_REQUIREMENTS, DEV_REQUIREMENTS = (
    "requirements-gpu.txt",
    "requirements.txt",
    "requirements-dev.txt",
)
FAISS_GPU_CHOICES = ("auto", "yes", "no")


class SetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    driver_major: int

    @property
    def sm(self) -> int:
        return 10 * self.capability[0] + self.capability[1]

    def label(self) -> str:
        return f"{self.name} ({self.capability[0]}.{self.capability[1]}, R{self.driver_major})"


@dataclass(frozen=True)
class Stack:
    name: str
    requirements: str
    torch_index: str | None = None  # None: PyPI's torch
    why: str = ""

    @property
    def faiss(self) -> str:
        """The stack's FAISS pin (``faiss-gpu==1.15.1``), read from its requirements file."""
        for line in (ROOT / self.requirements).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("faiss"):
                return line
        raise SetupError(f"{self.requirements} pins no FAISS package")

    @property
    def faiss_dist(self) -> str:
        return self.faiss.split("==")[0].strip()

    @property
    def torch_version(self) -> str | None:
        """The torch version this stack installs (``2.13.0+cu128``); None: whatever pip picks."""
        if self.name == "cpu":
            return None
        if self.torch_index is None:
            return TORCH
        return f"{TORCH}+{self.torch_index.rstrip('/').rsplit('/', 1)[-1]}"

    def describe(self) -> str:
        if self.name == "cpu":
            return f"CPU stack: {self.faiss}"
        where = "PyPI (CUDA 13.0)" if self.torch_index is None else self.torch_index
        return f"GPU stack {self.name}: torch {TORCH} from {where}, {self.faiss}"


CPU_STACK = Stack("cpu", CPU_REQUIREMENTS, why="no GPU stack asked for")


# ----------------------------------------------------------------------------- GPUs
def parse_smi(out: str) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader``."""
    gpus = []
    for line in out.strip().splitlines():
        if not line.strip():
            continue
        try:
            name, cc, driver = (part.strip() for part in line.rsplit(",", 2))
            major, minor = (int(p) for p in cc.split("."))
            gpus.append(Gpu(name, (major, minor), int(driver.split(".")[0])))
        except ValueError:
            raise SetupError(
                f"make setup GPU=1: cannot read nvidia-smi's line {line.strip()!r} "
                "(expected 'name, compute capability, driver version')"
            ) from None
    return gpus


def query_gpus(smi: str = "nvidia-smi") -> list[Gpu]:
    cmd = [smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SetupError(
            "make setup GPU=1: no NVIDIA driver here (nvidia-smi not found); on a CPU machine run `make setup`"
        ) from None
    except subprocess.TimeoutExpired:
        raise SetupError(
            "make setup GPU=1: nvidia-smi did not answer in 60 s; is the driver loaded?"
        ) from None
    if proc.returncode != 0:
        said = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        raise SetupError(
            f"make setup GPU=1: nvidia-smi failed (exit {proc.returncode}"
            + (f": {said[0]}" if said else "")
            + "); is the NVIDIA driver loaded?"
        )
    gpus = parse_smi(proc.stdout)
    if not gpus:
        raise SetupError("make setup GPU=1: nvidia-smi lists no GPU; on a CPU machine run `make setup`")
    return gpus


# ----------------------------------------------------------------------------- the choice
def runs(sass: Sequence[int], sm: int) -> bool:
    """Machine code for ``sm_XY`` runs on compute capability X.Z for Z >= Y."""
    return any(a // 10 == sm // 10 and a % 10 <= sm % 10 for a in sass)


def _cc(sm: int) -> str:
    return f"{sm // 10}.{sm % 10}"


def choose(gpus: Sequence[Gpu], faiss_gpu: str = "auto", torch_index: str | None = None) -> Stack:
    """The stack for these GPUs (all of one machine); SetupError with one line when none fits."""
    if faiss_gpu not in FAISS_GPU_CHOICES:
        raise SetupError(f"FAISS_GPU={faiss_gpu}: expected one of {', '.join(FAISS_GPU_CHOICES)}")
    sms = sorted({g.sm for g in gpus})
    driver = min(g.driver_major for g in gpus)
    names = ", ".join(sorted({g.label() for g in gpus}))
    cu12 = next((b for b in ("cu128", "cu126") if all(runs(TORCH_BUILDS[b], s) for s in sms)), None)
    cu13 = all(runs(TORCH_BUILDS["cu130"], s) for s in sms)
    faiss_ok = all(runs(FAISS_GPU_SASS, s) for s in sms)
    index = torch_index or (TORCH_INDEX.format(cu12) if cu12 else None)
    cc_list = ", ".join(_cc(s) for s in sms)

    if faiss_gpu != "no" and faiss_ok:
        if cu12 is None:
            problem = f"no CUDA 12 torch build has kernels for compute capability {cc_list}"
        elif driver < CUDA12_MIN_DRIVER:
            problem = f"driver R{driver} is too old for CUDA 12 (needs R{CUDA12_MIN_DRIVER}+)"
        else:
            why = f"faiss-gpu has machine code for {cc_list}; torch's {cu12} build covers it"
            return Stack("cu12-faiss-gpu", GPU_REQUIREMENTS, index, why)
        if faiss_gpu == "yes":
            raise SetupError(f"FAISS_GPU=yes: {problem}: {names}")
    elif faiss_gpu == "yes":
        raise SetupError(
            f"FAISS_GPU=yes: faiss-gpu 1.15.1 has machine code for compute capability 7.0-9.0 only, not {names}"
        )
    without = "FAISS_GPU=no" if faiss_gpu == "no" else f"faiss-gpu has no machine code for {cc_list}"
    if cu13 and driver >= CUDA13_MIN_DRIVER and torch_index is None:
        return Stack("cu13-faiss-cpu", CPU_REQUIREMENTS, None, f"{without}; driver R{driver} runs CUDA 13")
    if cu12 is not None and driver >= CUDA12_MIN_DRIVER:
        why = f"{without}; driver R{driver}" + (
            " (CUDA 13 needs R580+)" if driver < CUDA13_MIN_DRIVER else ""
        )
        return Stack("cu12-faiss-cpu", CPU_REQUIREMENTS, index, why)
    if cu12 is None and not cu13:
        raise SetupError(
            f"no torch {TORCH} CUDA build has kernels for compute capability {cc_list} "
            f"(CUDA 12.6 build: 5.0-9.0, CUDA 12.8 and 13.0 builds: 7.5-12.x): {names}"
        )
    need = CUDA12_MIN_DRIVER if cu12 is not None else CUDA13_MIN_DRIVER
    raise SetupError(
        f"driver R{driver} is too old for a torch build that covers these GPUs (needs R{need}+): {names}"
    )


# ----------------------------------------------------------------------------- the docs' table
#: One row per GPU generation and driver range where the choice differs: (GPUs, driver, example GPU).
TABLE_ROWS = (
    ("Maxwell, Pascal (5.0-6.x): P100, GTX 10xx", "R525+", Gpu("Tesla P100", (6, 0), 535)),
    ("Volta (7.0): V100", "R525+", Gpu("Tesla V100", (7, 0), 535)),
    ("Turing to Hopper (7.5-9.0): T4, A100, A10, L4, L40, H100, H200", "R525-R579", Gpu("H200", (9, 0), 550)),
    ("Turing to Hopper (7.5-9.0): T4, A100, A10, L4, L40, H100, H200", "R580+", Gpu("H200", (9, 0), 580)),
    ("Blackwell (10.0, 12.0): B200, RTX 50xx", "R570-R579", Gpu("B200", (10, 0), 570)),
    ("Blackwell (10.0, 12.0): B200, RTX 50xx", "R580+", Gpu("B200", (10, 0), 580)),
)


def _cell(stack: Stack) -> str:
    torch = (
        "PyPI (CUDA 13.0)" if stack.torch_index is None else "PyTorch " + stack.torch_index.rsplit("/", 1)[-1]
    )
    return f"`{stack.name}` (torch: {torch}; {stack.faiss_dist})"


def table() -> str:
    """The Markdown table of what ``make setup GPU=1`` installs (``docs/multi-gpu.md``)."""
    lines = [
        "| GPUs (compute capability) | driver | `FAISS_GPU=auto` (default) | `FAISS_GPU=no` |",
        "| --- | --- | --- | --- |",
    ]
    for gpus, driver, gpu in TABLE_ROWS:
        lines.append(f"| {gpus} | {driver} | {_cell(choose([gpu]))} | {_cell(choose([gpu], 'no'))} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- installing
Runner = Callable[[list[str]], None]


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, cwd=ROOT, check=True)


INSPECT = """# egra-inspect: the torch and FAISS distributions of this environment
import importlib.metadata as md, json
found = {}
for name in ("torch",) + tuple(__import__("sys").argv[1:]):
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
print(json.dumps(found))
"""

VERIFY = """# egra-verify: the installed stack, checked in the environment it was installed into
import sys
sys.path.insert(0, "tools")
import gpu_stack
sys.exit(gpu_stack.verify_here(sys.argv[1]))
"""


def installed(python: str) -> dict[str, str]:
    out = subprocess.run(
        [python, "-c", INSPECT, *FAISS_DISTS], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def _torch_wheel(wheels: Path, stack: Stack) -> Path:
    found = sorted(wheels.glob("torch-*.whl"))
    if len(found) != 1:
        raise SetupError(
            f"expected one torch wheel in {wheels} after the download, found {[f.name for f in found]}"
        )
    version = found[0].name.split("-")[1]
    if version != stack.torch_version:
        raise SetupError(
            f"the torch download gave {found[0].name}, not torch {stack.torch_version}: "
            "a pip index or find-links setting supplies another build"
        )
    return found[0]


def install(stack: Stack, python: str, run: Runner = _run) -> None:
    """Install ``stack`` into the venv of ``python``; see the module docstring for the order."""
    pip = [python, "-m", "pip"]
    have = installed(python)
    others = [d for d in FAISS_DISTS if d in have and d != stack.faiss_dist]
    swap_torch = stack.torch_version is not None and have.get("torch") != stack.torch_version
    requirements = ["-r", stack.requirements, "-r", DEV_REQUIREMENTS]
    venv = Path(python).absolute().parent.parent  # <venv>/bin/python, not what it links to
    wheels = Path(tempfile.mkdtemp(prefix=".egra-wheels-", dir=venv))
    try:
        replaced: list[str] = []
        if swap_torch:
            index = ["--index-url", stack.torch_index] if stack.torch_index else []
            run([*pip, "download", "-q", "-d", str(wheels), f"torch=={TORCH}", *index])
            replaced.append(str(_torch_wheel(wheels, stack)))
        if others:
            replaced.append(stack.faiss)
        if replaced:
            # Everything that replaces an installed package is on disk before anything goes.
            run([*pip, "download", "-q", "-d", str(wheels), "--find-links", str(wheels), *replaced])
            if others:
                run([*pip, "uninstall", "-q", "-y", *others])
            run([*pip, "install", "-q", "--no-index", "--find-links", str(wheels), *replaced])
        run([*pip, "install", "-q", *requirements])
        run([*pip, "install", "-q", "--no-deps", "-e", "."])
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    if subprocess.run([python, "-c", VERIFY, stack.name], cwd=ROOT).returncode != 0:
        raise SetupError("the installed stack failed its check (see the lines above)")


def verify_here(stack: str) -> int:
    """Run inside the venv after an install: one line of what is there, errors for what is wrong."""
    import importlib.metadata as md

    import faiss
    import torch

    from egra.graphs.cuda_arch import capability_str, parse_arch_list

    owners = []
    for dist in FAISS_DISTS:
        try:
            owners.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), faiss {faiss.__version__} from {owners}")
    problems = []
    if len(owners) != 1:
        problems.append(f"expected exactly one FAISS package, found {owners or 'none'}")
    if stack != "cpu":
        if torch.version.cuda is None:
            problems.append(f"torch {torch.__version__} is a CPU build")
        elif not torch.cuda.is_available():
            problems.append(
                f"torch {torch.__version__} sees no GPU: is the driver new enough for CUDA {torch.version.cuda}?"
            )
        else:
            archs = parse_arch_list(torch.cuda.get_arch_list())
            for i in range(torch.cuda.device_count()):
                cap = torch.cuda.get_device_capability(i)
                if not archs.runs_on(cap):
                    hint = (
                        " (TORCH_INDEX=https://download.pytorch.org/whl/cu126 covers 5.0-9.0)"
                        if cap < (7, 5)
                        else ""
                    )
                    problems.append(
                        f"torch {torch.__version__} has kernels for {archs.describe()}, none of which runs on "
                        f"GPU {i} ({torch.cuda.get_device_name(i)}, compute capability {capability_str(cap)}){hint}"
                    )
        if stack.endswith("faiss-gpu") and not problems:
            from egra.graphs.knn import faiss_gpu_problem

            if faiss.get_num_gpus() == 0:
                problems.append("faiss-gpu sees no GPU")
            for i in range(faiss.get_num_gpus()):
                problem = faiss_gpu_problem(i)
                if problem is not None:
                    problems.append(f"FAISS: {problem}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


# ----------------------------------------------------------------------------- the record
def write_record(
    path: Path,
    stack: Stack,
    gpus: Sequence[Gpu],
    faiss_gpu: str | None = None,
    torch_index: str | None = None,
) -> None:
    """The stack's name on the first line (what the Makefile reads), then ``key=value`` lines;
    ``faiss_gpu`` and ``torch_index`` (the user's choices) become the next install's defaults."""
    lines = [stack.name, f"torch={stack.torch_version or 'as pinned'}", f"faiss={stack.faiss}"]
    counts = Counter(g.label() for g in gpus)
    lines += [
        f"why={stack.why}",
        "gpus=" + "; ".join(f"{n} x {label}" for label, n in sorted(counts.items())),
    ]
    if faiss_gpu is not None:
        lines.append(f"faiss_gpu={faiss_gpu}")
    if torch_index:
        lines.append(f"torch_index={torch_index}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_record(path: Path | None) -> dict[str, str]:
    """The record's fields (``stack`` = its first line); empty when there is none."""
    if path is None or not path.exists():
        return {}
    lines = path.read_text().splitlines()
    out = {"stack": lines[0].strip()} if lines else {}
    for line in lines[1:]:
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["check", "plan", "install", "table"])
    ap.add_argument("--python", help="the venv's python (install)")
    ap.add_argument(
        "--record", type=Path, help="the venv's stack record (read for defaults, written after install)"
    )
    ap.add_argument("--cpu", action="store_true", help="install the CPU stack (no GPU inspected)")
    ap.add_argument("--faiss-gpu", choices=FAISS_GPU_CHOICES, help="default: the record's choice, else auto")
    ap.add_argument(
        "--torch-index", help="PyTorch index of the CUDA 12 torch (default: by compute capability)"
    )
    ap.add_argument("--nvidia-smi", default="nvidia-smi")
    args = ap.parse_args(argv)
    if args.action == "table":
        print(table())
        return 0
    recorded = read_record(args.record)
    faiss_gpu = args.faiss_gpu or recorded.get("faiss_gpu") or "auto"
    torch_index = args.torch_index or recorded.get("torch_index") or None
    try:
        gpus: list[Gpu] = []
        if args.cpu:
            stack = CPU_STACK
        else:
            gpus = query_gpus(args.nvidia_smi)
            stack = choose(gpus, faiss_gpu, torch_index)
        print(
            f"{stack.describe()} ({stack.why}; {len(gpus)} GPU(s))" if gpus else stack.describe(), flush=True
        )
        if args.action == "plan":
            print(
                f"pip install torch=={TORCH}"
                + (f" --index-url {stack.torch_index}" if stack.torch_index else "")
            )
            print(f"pip install -r {stack.requirements} -r {DEV_REQUIREMENTS}")
        if args.action != "install":
            return 0
        if not args.python:
            raise SetupError("install needs --python <venv python>")
        install(stack, args.python)
        if args.record is not None:
            if args.cpu:
                write_record(args.record, stack, gpus)
            else:
                write_record(args.record, stack, gpus, faiss_gpu, torch_index)
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(map(str, err.cmd[1:]))} failed (exit {err.returncode})", file=sys.stderr)
        return 1
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
