"""GPU readiness check on one GPU in at most 8 minutes (driven by ``bench/gpu_check.sh``).

    bench/gpu_check.sh --dry-run                # the plan: sections, sizes, time budgets; writes nothing
    bench/gpu_check.sh --out $OUT/gpu.json      # run it; gpu.json is rewritten after every section
    bench/gpu_check.sh --only spt_200k_64 resume --out /tmp/gpu.json
    bench/gpu_check.sh --smoke --out /tmp/smoke.json   # every section on the CPU at toy sizes

Each section runs in its own process group with its own time budget (the budgets add up to
at most 480 s): a section that hangs or overruns is killed with everything it started (its
``egra.train`` children too), recorded, and the next one runs. The results file is written
after every section, so a check stopped from outside still leaves what it finished. Without a
CUDA device visible to torch nothing runs and nothing is written (``--out`` defaults to
``bench/results/gpu.json``, which only a real GPU run may write); ``--smoke`` runs the same
code on the CPU at toy sizes, to check the script itself.

The two ``S^pt`` sections are sized for the FAISS this machine has: with FAISS on the GPU the
exact top-10 of 63k x 4096 vectors; with FAISS on the CPU (faiss-cpu, or a GPU its build has
no kernels for) 20k x 4096. Each kNN search runs once.

Packages: torch, lightning, numpy, scipy, pandas and the project's ``src`` (put on the path by
the shell script), plus hydra-core 1.3.8, omegaconf 2.3.1 (with antlr4-python3-runtime 4.9.3)
and FAISS. A machine without them can install carried wheels: ``bench/gpu_check.sh
--wheelhouse DIR`` (``bench/gpu_wheelhouse.sh`` downloads them for Python 3.12).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu.json"
TOTAL_BUDGET_S = 480
#: --smoke on a CPU: every budget and the total x3 (process start-up dominates there).
SMOKE_SLOWER = 3
KILL_GRACE_S = 3.0
NEEDED = {  # import name -> distribution to install
    "torch": "torch",
    "lightning": "lightning",
    "numpy": "numpy",
    "scipy": "scipy",
    "pandas": "pandas",
    "hydra": "hydra-core==1.3.8",
    "omegaconf": "omegaconf==2.3.1",
    "antlr4": "antlr4-python3-runtime==4.9.3",
    "faiss": "faiss-cpu==1.15.1 (or faiss-gpu==1.15.1 with a CUDA 12 torch)",
}


@dataclass(frozen=True)
class Section:
    name: str
    budget_s: int
    what: str


def sections(faiss_gpu: bool, smoke: bool = False) -> list[Section]:
    """The plan, in order; the two S^pt sizes follow the FAISS device."""
    big = "63k x 4096" if faiss_gpu else "20k x 4096"
    data = "tiny" if smoke else "baby"
    return [
        Section("data", 35, f"generate the {data} preset once (features + interactions), shared by the runs"),
        Section("spt_200k_64", 25, "S^pt top-10 (EGRA convention, exact, one search) of 200k x 64 vectors"),
        Section("spt_4096", 40, f"S^pt top-10 of {big} vectors (sized for FAISS on the {'GPU' if faiss_gpu else 'CPU'})"),
        Section("fp32_epochs", 65, "one epoch each of LightGCN, MGCN, EGRA (graph_source=random), fp32, + a timed eval pass"),
        Section("bf16_mixed", 45, "one epoch each of MGCN and EGRA, trainer.precision=bf16-mixed"),
        Section("fp16_mixed", 45, "one epoch each of MGCN and EGRA, 16-mixed (GradScaler, fused Adam)"),
        Section("gpu_grads", 45, "bench/gpu_grads.py: GPU vs CPU gradients, autocast, 1M-item evaluation"),
        Section("self_graph", 40, "EGRA graph_source=self: 2 epochs, S^pt rebuilt from its own vectors each epoch"),
        Section("freedom", 30, "one epoch of FREEDOM"),
        Section("resume", 40, "EGRA on the tiny preset: 2 epochs, then the run resumed to 3 (ckpt_path=last)"),
        Section("ddp1", 35, "egra-train experiment=egra_tiny trainer=ddp trainer.devices=1, 2+2 epochs (Lightning's DDP launcher)"),
    ]  # fmt: skip


def missing_packages() -> list[str]:
    return [dist for mod, dist in NEEDED.items() if importlib.util.find_spec(mod) is None]


# ---------------------------------------------------------------------------- sections (child)
def _compose(work: Path, shared: Path, smoke: bool, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    base = [
        f"paths.root_dir={work}",
        f"paths.data_dir={shared / 'data'}",  # generated once for all sections
        f"paths.artifact_dir={shared / 'artifacts'}",  # S^m built once, reused
        "data=synthetic",
        f"data.preset={'tiny' if smoke else 'baby'}",
        f"trainer={'cpu' if smoke else 'gpu'}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "skip_if_done=false",
        *(["threads=1"] if smoke else []),
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
    return cfg


def _data(work: Path, shared: Path, smoke: bool) -> dict:
    from egra.pipeline.load import load_data

    t = time.perf_counter()
    dm = load_data(_compose(work, shared, smoke, []))
    d = dm.data
    return {
        "seconds": round(time.perf_counter() - t, 1),
        "users": d.n_users,
        "items": d.n_items,
        "features": {k: list(v.shape) for k, v in d.features.items()},
    }


def _spt(n: int, d: int) -> dict:
    import numpy as np

    from egra.graphs import rank_device
    from egra.graphs.knn import EGRA_PRETRAINED_GRAPH, knn_graph

    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    device = rank_device("auto", 0)
    t = time.perf_counter()
    g = knn_graph(x, 10, device=device, **EGRA_PRETRAINED_GRAPH)
    return {
        "n": n,
        "d": d,
        "device": device,
        "graph_s": round(time.perf_counter() - t, 3),
        "nnz": int(g.nnz),
        "every_row_has_10": bool((np.diff(g.indptr) >= 10).all()),
    }


def _fit(model: str, work: Path, shared: Path, smoke: bool, extra: list[str] = ()) -> dict:
    """One pipeline run (``egra.pipeline.train.run``) and what it proves."""
    import torch

    from egra.pipeline.train import run

    overrides = [f"model={model}", *extra]
    if model == "egra" and not any(o.startswith("graph.graph_source") for o in extra):
        overrides.append("graph.graph_source=random")  # no backbone to train here
    cfg = _compose(work / model, shared, smoke, overrides)
    print(f"[section] {model}: {' '.join(overrides)}", flush=True)
    metrics = run(cfg)
    out = {
        "fit_s": metrics["fit_time_s"],
        "wall_s": metrics["wall_time_s"],
        "epochs_run": metrics["epochs_run"],
        "valid/Recall@20": metrics["valid/Recall@20"],
        "test/Recall@20": metrics["test/Recall@20"],
    }
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    scaler = ckpt.get("MixedPrecision") or {}
    out["grad_scaler_scale"] = float(scaler["scale"]) if "scale" in scaler else None
    groups = ckpt["optimizer_states"][0]["param_groups"]
    out["fused_adam"] = bool(groups[0].get("fused"))
    for key in ("graph_refreshes", "graph_refresh_s", "graph_refresh_edges"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def _eval_pass(work: Path, shared: Path, smoke: bool, model: str) -> dict:
    """A timed evaluation of all valid users on the run's best checkpoint; must match the run."""
    import lightning as L

    from egra.pipeline.evaluate import load_module
    from egra.pipeline.load import load_data

    cfg = _compose(work / model, shared, smoke, [f"model={model}"])
    dm = load_data(cfg)
    module = load_module(cfg, dm, Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    trainer = L.Trainer(
        accelerator="cpu" if smoke else "gpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    t = time.perf_counter()
    valid = trainer.validate(module, datamodule=dm, verbose=False)[0]
    return {"eval_pass_s": round(time.perf_counter() - t, 3), "valid/Recall@20": valid["valid/Recall@20"]}


def _models(models: list[str], work: Path, shared: Path, smoke: bool, extra: list[str]) -> dict:
    return {m: _fit(m, work, shared, smoke, extra) for m in models}


def _cli(args: list[str], run_dir: Path, work: Path, smoke: bool) -> dict:
    """``egra-train`` in a subprocess (the command users run), in this section's process group."""
    from egra.experiments import launch

    overrides = [
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.root_dir={work}",
        f"hydra.run.dir={run_dir}",
        *(["trainer.accelerator=cpu", "threads=1"] if smoke else []),
        *args,
    ]
    t = time.perf_counter()
    log = run_dir.parent / f"{run_dir.name}.log"
    print(f"[section] egra-train {' '.join(overrides)} (log: {log})", flush=True)
    # The study layer's launcher, kept in this section's process group: a section killed at its
    # time limit takes its egra-train with it.
    status = launch.train(overrides, log, own_group=False)
    if status != 0:
        raise RuntimeError(f"egra-train {' '.join(args)}: exit {status}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "wall_s": round(time.perf_counter() - t, 1),
        "epochs_run": metrics["epochs_run"],
        "test/Recall@20": metrics["test/Recall@20"],
    }


def _resume(work: Path, shared: Path, smoke: bool) -> dict:
    """Two epochs of EGRA on the tiny preset, then the same run resumed to three."""
    from egra.pipeline.train import run

    base = ["model=egra", "graph.graph_source=random", "data.preset=tiny", "skip_if_done=false"]
    first = run(_compose(work, shared, smoke, [*base, "trainer.max_epochs=2"]))
    resumed = run(_compose(work, shared, smoke, [*base, "trainer.max_epochs=3", "ckpt_path=last"]))
    if (first["epochs_run"], resumed["epochs_run"]) != (2, 3):
        raise RuntimeError(
            f"epochs run: {first['epochs_run']}, then {resumed['epochs_run']} (expected 2, then 3)"
        )
    return {
        "epochs_run": resumed["epochs_run"],
        "fit_s": resumed["fit_time_s"],
        "test/Recall@20": resumed["test/Recall@20"],
    }


def run_section(name: str, shared: Path, smoke: bool, faiss_gpu: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared))
    if name == "data":
        return _data(work, shared, smoke)
    if name == "spt_200k_64":
        return _spt(2_000, 64) if smoke else _spt(200_000, 64)
    if name == "spt_4096":
        return _spt(630, 256) if smoke else _spt(63_000 if faiss_gpu else 20_000, 4096)
    if name == "fp32_epochs":
        out = _models(["lightgcn", "mgcn", "egra"], work, shared, smoke, [])
        out["mgcn_eval"] = _eval_pass(work, shared, smoke, "mgcn")
        out["eval_matches_run"] = (
            abs(out["mgcn_eval"]["valid/Recall@20"] - out["mgcn"]["valid/Recall@20"]) < 1e-5
        )
        return out
    if name == "bf16_mixed":
        return _models(["mgcn", "egra"], work, shared, smoke, ["trainer.precision=bf16-mixed"])
    if name == "fp16_mixed":
        # 16-mixed needs a GPU (Lightning refuses fp16 autocast on the CPU): the smoke runs bf16.
        precision = "bf16-mixed" if smoke else "16-mixed"
        out = _models(["mgcn", "egra"], work, shared, smoke, [f"trainer.precision={precision}"])
        out["grad_scaler_used"] = all(out[m]["grad_scaler_scale"] is not None for m in ("mgcn", "egra"))
        if not smoke and not out["grad_scaler_used"]:
            raise RuntimeError(f"16-mixed ran without a GradScaler: {out}")
        return out
    if name == "gpu_grads":
        import torch

        if not torch.cuda.is_available():
            return {"skipped": "needs CUDA"}
        spec = importlib.util.spec_from_file_location("gpu_grads", HERE / "gpu_grads.py")
        grads = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(grads)
        path = shared / "gpu_grads.json"
        status = grads.main(["--out", str(path)])
        result = json.loads(path.read_text())
        if status != 0:
            raise RuntimeError(f"gpu_grads failed: {json.dumps(result)[:2000]}")
        return {
            "max_rel_grad_diff": max(r["max_rel_grad_diff"] for r in result["grads"].values()),
            "autocast_ok": all(r["ok"] for r in result["autocast"].values()),
            "eval_1m": result["eval_1m"],
        }
    if name == "self_graph":
        extra = ["graph.graph_source=self", "graph.graph_refresh_every=1", "trainer.max_epochs=2"]
        return _fit("egra", work, shared, smoke, extra)
    if name == "freedom":
        return _fit("freedom", work, shared, smoke, [])
    if name == "resume":
        return _resume(work, shared, smoke)
    if name == "ddp1":
        # The whole pipeline, an MGCN backbone included, under Lightning's DDP launcher.
        args = ["experiment=egra_tiny", "trainer=ddp", "trainer.devices=1", "backbones.mgcn.max_epochs=2"]
        args += ["trainer.max_epochs=2", *(["trainer.accelerator=cpu"] if smoke else [])]
        return _cli(args, work / "run", work, smoke)
    raise ValueError(f"unknown section {name!r}")


# ---------------------------------------------------------------------------- the driver
def kill_group(pgid: int, leader: subprocess.Popen | None = None) -> bool:
    """The study layer's group kill (SIGTERM, then SIGKILL after KILL_GRACE_S)."""
    from egra.experiments.launch import kill_group as kill

    return kill(pgid, KILL_GRACE_S, leader)


_RUNNING: dict[str, int] = {}  # the section's process group, for a signal to the driver


def run_in_group(cmd: list[str], timeout: float) -> tuple[int | None, str, bool]:
    """Run ``cmd`` as the leader of a new process group: (exit status or None, output,
    timed out). On timeout the whole group goes, grandchildren included."""
    proc = subprocess.Popen(
        cmd,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _RUNNING["pgid"] = proc.pid
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out, False
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, proc)
        out, _ = proc.communicate()
        return None, out, True
    finally:
        kill_group(proc.pid)  # anything the section left running in its group
        _RUNNING.pop("pgid", None)


def _child(name: str, limit: float, shared: Path, smoke: bool, faiss_gpu: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--work", str(shared)]
    cmd += ["--faiss-gpu"] if faiss_gpu else []
    cmd += ["--smoke"] if smoke else []
    t = time.perf_counter()
    status, out, timed_out = run_in_group(cmd, limit)
    rec: dict = {"seconds": round(time.perf_counter() - t, 1)}
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if timed_out:
        rec.update(ok=False, error=f"timeout after {limit:.0f} s (process group killed)")
    elif status != 0 or not lines:
        rec.update(ok=False, error=f"exit {status}")
    else:
        rec.update(ok=True, **json.loads(lines[-1][len("RESULT ") :]))
    if not rec["ok"]:
        rec["tail"] = out[-3000:].splitlines()
    return rec


def environment() -> dict:
    import torch

    info: dict = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability(0)
        info.update(
            device_count=torch.cuda.device_count(),
            device_name=torch.cuda.get_device_name(0),
            compute_capability=f"{cap[0]}.{cap[1]}",
            memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            torch_arch_list=torch.cuda.get_arch_list(),
        )
    import faiss

    from egra.graphs.knn import faiss_gpu_problem, faiss_kernel_archs, rank_device

    info["faiss"] = faiss.__version__
    info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    info["faiss_kernels"] = faiss_kernel_archs().describe()
    info["faiss_device"] = rank_device("auto", 0)
    if info["faiss_gpus"] and info["faiss_device"] == "cpu":
        info["faiss_off_gpu_because"] = faiss_gpu_problem(0)
    return info


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def _headline(name: str, rec: dict) -> str:
    if not rec.get("ok"):
        return rec.get("error", "")
    if "skipped" in rec:
        return f"skipped: {rec['skipped']}"
    if name == "data":
        return f"{rec['users']} users x {rec['items']} items in {rec['seconds']} s"
    if name.startswith("spt"):
        return f"{rec['n']} x {rec['d']} on {rec['device']}: {rec['graph_s']} s"
    if name == "gpu_grads":
        return f"max rel grad diff {rec['max_rel_grad_diff']:.1e}, 1M-item eval {rec['eval_1m']['seconds']} s"
    if name in ("resume", "ddp1"):
        last = rec.get("resumed", rec)
        return f"{last['epochs_run']} epochs, test R@20 {last['test/Recall@20']:.4f}"
    fits = {k: v for k, v in rec.items() if isinstance(v, dict) and "fit_s" in v}
    if "fit_s" in rec:
        fits = {name: rec}
    return ", ".join(f"{m} fit {v['fit_s']:.1f} s" for m, v in fits.items())


def table(result: dict) -> str:
    rows = [f"{'section':<13} {'status':<8} {'used/budget s':>13}  result"]
    for name, budget in result["plan"].items():
        rec = result["sections"].get(name)
        if rec is None:
            rows.append(f"{name:<13} {'not run':<8} {'-/' + str(budget):>13}")
            continue
        status = "ok" if rec["ok"] else "FAILED"
        used = "{:.0f}/{}".format(rec["seconds"], budget)
        rows.append(f"{name:<13} {status:<8} {used:>13}  {_headline(name, rec)}")
    rows.append(
        f"total {result['total_s']} s of {result['budget_total_s']} s budgeted; all ok: {result['all_ok']}"
    )
    return "\n".join(rows)


def _faiss_on_gpu() -> bool:
    from egra.graphs.knn import rank_device

    return rank_device("auto", 0) != "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--faiss-gpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only", nargs="+", help="run these sections only (names from --dry-run)")
    p.add_argument(
        "--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)}, GPU runs only)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan with each section's budget; run and write nothing",
    )
    p.add_argument("--smoke", action="store_true", help="every section on the CPU at toy sizes (needs --out)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    args = p.parse_args(argv)
    if args.section:
        shared = args.work
        print(
            "RESULT " + json.dumps(run_section(args.section, shared, args.smoke, args.faiss_gpu)), flush=True
        )
        return 0

    missing = missing_packages()
    if missing:
        print(
            "gpu_check: missing Python packages: " + "; ".join(missing) + ". Install them, or carry wheels "
            "(bench/gpu_wheelhouse.sh) and run bench/gpu_check.sh --wheelhouse DIR",
            file=sys.stderr,
        )
        return 2
    faiss_gpu = _faiss_on_gpu()
    plan = sections(faiss_gpu, args.smoke)
    names = [s.name for s in plan]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        print(f"gpu_check: unknown section(s) {unknown}; the sections are {names}", file=sys.stderr)
        return 2
    chosen = [s for s in plan if not args.only or s.name in args.only]
    total = sum(s.budget_s for s in plan)
    assert total <= TOTAL_BUDGET_S, f"section budgets add up to {total} s > {TOTAL_BUDGET_S} s"
    if args.dry_run:
        print(
            f"gpu_check plan (FAISS on the {'GPU' if faiss_gpu else 'CPU'} here; nothing is run or written):"
        )
        for s in chosen:
            print(f"  {s.name:<13} {s.budget_s:>4} s  {s.what}")
        print(
            f"  {'total':<13} {sum(s.budget_s for s in chosen):>4} s  (all sections: {total} s <= {TOTAL_BUDGET_S} s)"
        )
        return 0

    import torch

    if args.smoke and args.out is None:
        print("gpu_check: --smoke needs --out (a smoke run never writes bench/results/)", file=sys.stderr)
        return 2
    if not args.smoke and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False): nothing run, "
            "nothing written (--dry-run shows the plan, --smoke runs it on the CPU)",
            file=sys.stderr,
        )
        return 1
    out_path = args.out or DEFAULT_OUT
    from egra.pipeline.io import git_dirty, git_revision

    shared = args.work or Path(tempfile.mkdtemp(prefix="egra-gpu-check-"))
    shared.mkdir(parents=True, exist_ok=True)
    scale = SMOKE_SLOWER if args.smoke else 1
    result: dict = {
        "command": "bench/gpu_check.sh " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": git_revision(ROOT),
        "dirty": git_dirty(ROOT),
        "smoke": bool(args.smoke),
        "environment": environment(),
        "plan": {s.name: scale * s.budget_s for s in chosen},
        "budget_total_s": scale * sum(s.budget_s for s in chosen),
        "sections": {},
        "complete": False,
    }
    t0 = time.perf_counter()

    def stop(signum, frame):  # e.g. the shell script's timeout: leave no section running
        if "pgid" in _RUNNING:
            kill_group(_RUNNING["pgid"])
        result["stopped_by_signal"] = signal.Signals(signum).name
        result["total_s"] = round(time.perf_counter() - t0, 1)
        result["all_ok"] = False
        _write(out_path, result)
        sys.exit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for s in chosen:
        left = scale * TOTAL_BUDGET_S - (time.perf_counter() - t0)
        limit = min(scale * s.budget_s, left)
        print(f"[gpu_check] {s.name} (budget {s.budget_s} s): {s.what}", flush=True)
        if limit < 1:
            rec = {"ok": False, "seconds": 0.0, "error": "no time left of the total budget"}
        else:
            rec = _child(s.name, limit, shared, args.smoke, faiss_gpu)
        result["sections"][s.name] = rec
        result["total_s"] = round(time.perf_counter() - t0, 1)
        result["all_ok"] = all(r["ok"] for r in result["sections"].values())
        _write(out_path, result)  # after every section
        print(
            f"[gpu_check] {s.name}: {'ok' if rec['ok'] else 'FAILED: ' + rec['error']} in {rec['seconds']} s",
            flush=True,
        )
    result["complete"] = True
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["all_ok"] = all(r["ok"] for r in result["sections"].values())
    _write(out_path, result)
    print(table(result))
    print(f"[gpu_check] wrote {out_path}")
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
