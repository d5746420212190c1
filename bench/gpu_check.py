"""GPU readiness check (driven by ``bench/gpu_check.sh``): writes ``bench/results/gpu.json``.

Sections, each in its own process with its own time limit (a hang or crash is recorded and
the next section runs):

1. ``spt_200k_64`` / ``spt_63k_4096`` — FAISS top-10 ``S^pt`` builds (``egra.graphs``,
   EGRA's convention) on random unit vectors, on the device the graph stage would pick
   (``graph.device=auto`` → this process's GPU when faiss-gpu sees one);
2. ``epoch_lightgcn`` / ``epoch_mgcn`` / ``epoch_egra`` — one epoch of each model on the
   generated ``baby`` preset with ``trainer=gpu`` through the real pipeline (EGRA on
   ``graph_source=random``, so no backbone is trained), then one timed evaluation pass over
   all valid users of the best checkpoint;
3. ``tiny_gpu`` / ``tiny_ddp1`` — ``egra-train experiment=egra_tiny`` with ``trainer=gpu`` and
   with ``trainer=ddp trainer.devices=1`` (the whole pipeline, Lightning's DDP launcher).

The device is never assumed: without a CUDA device visible to torch the script records
why and runs nothing; ``CUDA_VISIBLE_DEVICES`` picks the GPU. ``--dry-run`` runs every
section on the CPU at toy sizes (tiny preset, small matrices): a check of the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu.json"
SECTIONS = {
    # name: time limit (s); the sum stays under the 10 minutes of gpu_check.sh.
    "spt_200k_64": 60,
    "spt_63k_4096": 90,
    "epoch_lightgcn": 90,
    "epoch_mgcn": 120,
    "epoch_egra": 120,
    "tiny_gpu": 45,
    "tiny_ddp1": 60,
}


def _environment() -> dict:
    import torch

    info: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(
            cuda=torch.version.cuda,
            device_count=torch.cuda.device_count(),
            device_name=torch.cuda.get_device_name(0),
            memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        )
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    except ImportError as err:
        info["faiss"] = f"not importable: {err}"
    return info


# ---------------------------------------------------------------------------- sections
def _spt(n: int, d: int) -> dict:
    import numpy as np

    from egra.graphs import rank_device
    from egra.graphs.knn import EGRA_PRETRAINED_GRAPH, build_index, knn_graph, search_index

    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    device = rank_device("auto", 0)
    index = build_index(x, method="flat", device=device)
    t = time.perf_counter()
    idx, _ = search_index(index, x, 10, exclude_self=True)
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    g = knn_graph(x, 10, device=device, **EGRA_PRETRAINED_GRAPH)
    return {
        "n": n,
        "d": d,
        "device": index.device,
        "index_build_s": round(index.build_seconds, 3),
        "top10_search_s": round(search_s, 3),
        "graph_s": round(time.perf_counter() - t, 3),
        "nnz": int(g.nnz),
        "full_rows": bool((idx >= 0).all()),
    }


def _epoch(model: str, work: Path, shared: Path, dry: bool) -> dict:
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from egra.pipeline.evaluate import load_module
    from egra.pipeline.load import load_data
    from egra.pipeline.train import run

    overrides = [
        f"paths.root_dir={work}",
        f"paths.data_dir={shared / 'data'}",  # the baby preset is generated once for all models
        "data=synthetic",
        f"data.preset={'tiny' if dry else 'baby'}",
        f"model={model}",
        f"trainer={'cpu' if dry else 'gpu'}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "skip_if_done=false",
    ]
    if model == "egra":
        overrides.append("graph.graph_source=random")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / f"run-{model}")
    metrics = run(cfg)
    dm = load_data(cfg)
    module = load_module(cfg, dm, Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    trainer = L.Trainer(
        accelerator="cpu" if dry else "gpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    t = time.perf_counter()
    valid = trainer.validate(module, datamodule=dm, verbose=False)[0]
    eval_s = time.perf_counter() - t
    return {
        "fit_s_one_epoch_with_validation": metrics["fit_time_s"],
        "wall_s_pipeline": metrics["wall_time_s"],
        "eval_pass_s": round(eval_s, 3),
        "valid/Recall@20": metrics["valid/Recall@20"],
        "test/Recall@20": metrics["test/Recall@20"],
        "eval_matches_run": abs(valid["valid/Recall@20"] - metrics["valid/Recall@20"]) < 1e-5,
    }


def _tiny(trainer_args: list[str], work: Path) -> dict:
    run_dir = work / "run"
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        "experiment=egra_tiny",
        *trainer_args,
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.root_dir={work}",
        f"hydra.run.dir={run_dir}",
    ]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"exit {out.returncode}: {(out.stderr or out.stdout)[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_s": round(time.perf_counter() - t, 1), "test/Recall@20": metrics["test/Recall@20"]}


def run_section(name: str, shared: Path, dry: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"egra-gpu-{name}-", dir=shared))
    accel = ["trainer.accelerator=cpu", "threads=1"] if dry else []
    if name == "spt_200k_64":
        return _spt(2_000, 64) if dry else _spt(200_000, 64)
    if name == "spt_63k_4096":
        return _spt(630, 256) if dry else _spt(63_001, 4096)
    if name.startswith("epoch_"):
        return _epoch(name.split("_", 1)[1], work, shared, dry)
    if name == "tiny_gpu":
        return _tiny(["trainer=cpu" if dry else "trainer=gpu", *accel], work)
    if name == "tiny_ddp1":
        return _tiny(["trainer=ddp", "trainer.devices=1", *accel], work)
    raise ValueError(f"unknown section {name!r}")


# ---------------------------------------------------------------------------- driver
def _child(name: str, limit: float, shared: Path, dry: bool) -> dict:
    t = time.perf_counter()
    try:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--section",
                name,
                "--work",
                str(shared),
                *(["--dry-run"] if dry else []),
            ],
            capture_output=True,
            text=True,
            timeout=limit,
            cwd=str(ROOT),
        )
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "error": f"timeout after {limit:.0f}s",
            "seconds": round(time.perf_counter() - t, 1),
        }
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    rec: dict = {"seconds": round(time.perf_counter() - t, 1)}
    if out.returncode != 0 or not lines:
        rec.update(
            ok=False, error=f"exit {out.returncode}", tail=(out.stderr or out.stdout)[-3000:].splitlines()
        )
    else:
        rec.update(ok=True, **json.loads(lines[-1][len("RESULT ") :]))
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", help="run one section in this process and print its RESULT line")
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run these sections only")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--dry-run", action="store_true", help="every section on the CPU at toy sizes")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    args = p.parse_args()
    shared = args.work or Path(tempfile.mkdtemp(prefix="egra-gpu-check-"))
    if args.section:
        print("RESULT " + json.dumps(run_section(args.section, shared, args.dry_run)), flush=True)
        return

    from egra.pipeline.io import git_dirty, git_revision

    env = _environment()
    result: dict = {
        "environment": env,
        "commit": git_revision(ROOT),
        "dirty": git_dirty(ROOT),
        "sections": {},
        "dry_run": bool(args.dry_run),
    }
    t0 = time.perf_counter()
    if not env.get("cuda_available") and not args.dry_run:
        result["skipped"] = (
            "no CUDA device visible to torch (torch.cuda.is_available() is False): nothing run"
        )
    else:
        for name in args.only or SECTIONS:
            print(f"[gpu_check] {name} (limit {SECTIONS[name]} s) ...", flush=True)
            rec = _child(name, SECTIONS[name], shared, args.dry_run)
            result["sections"][name] = rec
            status = "ok" if rec["ok"] else f"FAILED ({rec['error']})"
            print(f"[gpu_check] {name}: {status} in {rec['seconds']} s", flush=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["all_ok"] = bool(result["sections"]) and all(r["ok"] for r in result["sections"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[gpu_check] wrote {args.out}" + (f" ({result['skipped']})" if "skipped" in result else ""))
    if "skipped" in result or not result["all_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    main()
