"""Benchmark: training throughput, evaluation time, graph building and peak memory.

For LightGCN, MGCN and EGRA on the generated ``baby`` preset (Amazon Baby's shape: 19,445
users, 7,050 items, ~160k interactions, 4096-d image and 384-d text features), at one
torch thread and at all cores, this measures:

* ``epoch_s_median`` — wall seconds per training epoch (median over ``--epochs``
  epochs), run the way training really runs: a Lightning ``Trainer`` fitting our
  ``RecommenderModule`` on our ``RecDataModule`` (BPR sampler, model loss, backward,
  fused Adam, per-step logging), with validation off (``limit_val_batches=0``) and no
  checkpointing, so only the training loop is timed. ``epoch_cpu_s_median`` is the
  process CPU time of the same epochs: the figure to trust when other jobs share the
  cores (wall time then includes waiting for a core).
* ``eval_s`` — one full-ranking validation pass over all valid users
  (``trainer.validate``: one full forward, then chunks of score / mask / top-50 /
  metrics), median of ``--eval-repeats`` passes; ``test_s`` the same for the test split
  (it adds the popularity-group metrics).
* ``graph_build_s`` — one-off graph building: for MGCN/EGRA the modality kNN graphs of
  the raw features (``modality_graph_s``, ``egra.graphs.modality_graphs`` as the graph
  stage calls it, without its cache), for EGRA the ``S^pt`` graph (``spt_graph_s``, on
  random 64-d item vectors standing in for the pretrained embeddings), and the model's
  construction (``init_s``: normalised user-item and enhanced adjacencies).
* ``ckpt_s`` / ``ckpt_mb`` — saving one full checkpoint (weights + optimizer state)
  after training, i.e. what ``ModelCheckpoint`` writes for each file it saves.
* ``peak_mb`` — the case's peak resident memory (``ru_maxrss``); every (model, threads)
  case runs in a fresh subprocess.

Model settings are the project's configs (``conf/model/*.yaml``, MMRec's defaults: batch
2048, 64-d, LightGCN 2 layers, MGCN 2 + 1 layers with trainable raw features and
``cl_loss`` 0.01) and the optimizer is ``conf/train.yaml``'s ``optim`` (fused Adam).

Every record carries MMRec's reference timings (measured elsewhere: 1 thread
on a 2-core machine) and the ratios to them; EGRA has no MMRec reference and is compared
with our MGCN epoch at the same thread count.

    python bench/train_throughput.py                 # baby, 1 and 2 threads (~15 min)
    python bench/train_throughput.py --threads 1     # one-thread figures only
    python bench/train_throughput.py --quick         # smoke run on the small preset
    python bench/train_throughput.py --models lightgcn --merge   # re-measure one model in place
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from egra.pipeline.io import git_dirty, git_revision

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONF_DIR = ROOT / "conf"
DEFAULT_OUT = HERE / "results" / "train_throughput.json"

# MMRec on Baby-shaped synthetic data, 1 torch thread, timed on another machine.
REFERENCE = {
    "lightgcn": {"epoch_s": 7.0, "eval_s": 3.8, "graph_build_s": 0.3},
    "mgcn": {"epoch_s": 52.0, "eval_s": 4.4, "graph_build_s": 11.0},
}
# Targets of the performance issue (1 thread, baby): ratio to the reference.
TARGETS = {
    "lightgcn": {"epoch": 0.40, "eval": 0.35},
    "mgcn": {"epoch": 0.45, "eval": 0.35},
    "egra": {"epoch_vs_mgcn": 1.30, "eval": 0.35},
}
MODELS = ("lightgcn", "mgcn", "egra")


# ----------------------------------------------------------------------------------------
# Child side: one (model, threads) case


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _compose(case: dict, out_dir: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    overrides = [
        f"paths.root_dir={case['root_dir']}",
        "data=synthetic",
        f"data.preset={case['preset']}",
        f"model={case['model']}",
        "logger=none",
        f"threads={case['threads']}",
        "graph.device=cpu",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = out_dir
    return cfg


def run_case(case: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(int(case["threads"]))
    import lightning as L

    from egra.graphs import knn_graph, modality_graphs
    from egra.pipeline.fit import build_module, build_net
    from egra.pipeline.graph import GraphSpec, constructor_config, search_options
    from egra.pipeline.load import load_data
    from egra.training.callbacks import AlignmentSchedule

    rec: dict = {"load_1m_start": round(os.getloadavg()[0], 2)}
    out_dir = tempfile.mkdtemp(prefix="egra-bench-")
    cfg = _compose(case, out_dir)
    L.seed_everything(int(cfg.seed), workers=True)
    dm = load_data(cfg)
    rec["dataset"] = dm.data.name
    rec["n_users"], rec["n_items"] = int(dm.data.n_users), int(dm.data.n_items)
    rec["train_batches"] = len(dm.train_dataloader())

    # The graph stage's work, timed without its cache: S^m of the features, and for EGRA
    # an S^pt of random 64-d vectors (the backbone is not part of this benchmark).
    spec, opts = GraphSpec.of(cfg.model), search_options(cfg)
    inputs: dict = {}
    t = time.perf_counter()
    if spec.knn_k is not None:
        inputs["modality_graphs"] = modality_graphs(dm.data.features, spec.knn_k, **opts)
    sm_s = time.perf_counter() - t
    spt_s = 0.0
    if case["model"] == "egra":
        items = np.random.default_rng(0).standard_normal((dm.data.n_items, 64)).astype(np.float32)
        t = time.perf_counter()
        inputs["item_graph"] = knn_graph(
            items,
            spec.k_pt,
            include_self=False,
            symmetric=spec.symmetric,
            weighted=spec.weighted,
            normalization="none",
            **opts,
        )
        spt_s = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    net = build_net(constructor_config(cfg.model), dm, inputs)
    rec["init_s"] = round(time.perf_counter() - t, 3)
    rec["init_cpu_s"] = round(time.process_time() - c, 3)
    rec["spt_graph_s"] = round(spt_s, 3)
    rec["modality_graph_s"] = round(sm_s, 3)
    rec["graph_build_s"] = round(rec["init_s"] + sm_s + spt_s, 3)
    rec["params_m"] = round(sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6, 2)
    module = build_module(cfg, dm, net)

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.wall.append(time.perf_counter() - self._t)
            self.cpu.append(time.process_time() - self._c)

    timer = EpochTimer()
    common = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=out_dir,
    )
    trainer = L.Trainer(
        max_epochs=int(case["epochs"]),
        limit_val_batches=0,
        callbacks=[AlignmentSchedule(), timer],
        **common,
    )
    trainer.fit(module, datamodule=dm)
    rec["epoch_s"] = [round(x, 3) for x in timer.wall]
    rec["epoch_cpu_s"] = [round(x, 3) for x in timer.cpu]
    # The first epoch includes one-off warm-up (allocator, lazy init): left out of the
    # median when there are at least three epochs.
    keep = slice(1, None) if len(timer.wall) >= 3 else slice(None)
    rec["epoch_s_median"] = round(statistics.median(timer.wall[keep]), 3)
    rec["epoch_cpu_s_median"] = round(statistics.median(timer.cpu[keep]), 3)
    rec["step_s"] = round(rec["epoch_s_median"] / rec["train_batches"], 4)
    rec["final_train_loss"] = float(trainer.callback_metrics.get("train/loss", float("nan")))

    # Checkpoint save (weights + optimizer state): what ModelCheckpoint writes per file,
    # synchronously (Lightning's default) and through AsyncCheckpointIO (conf/trainer:
    # the training loop only waits for the tensor copy).
    from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

    ckpt = Path(out_dir) / "bench.ckpt"
    state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    t = time.perf_counter()
    TorchCheckpointIO().save_checkpoint(state, ckpt)
    rec["ckpt_s"] = round(time.perf_counter() - t, 3)
    rec["ckpt_mb"] = round(ckpt.stat().st_size / 2**20, 1)
    ckpt.unlink()
    aio = AsyncCheckpointIO(TorchCheckpointIO())
    t = time.perf_counter()
    aio.save_checkpoint(state, ckpt)
    rec["ckpt_async_blocking_s"] = round(time.perf_counter() - t, 3)
    aio.teardown()
    rec["ckpt_async_total_s"] = round(time.perf_counter() - t, 3)
    ckpt.unlink()
    del state

    # Full-ranking evaluation through Lightning.
    ev = L.Trainer(**common)
    walls, cpus, metrics = [], [], {}
    for _ in range(int(case["eval_repeats"])):
        t, c = time.perf_counter(), time.process_time()
        metrics = ev.validate(module, datamodule=dm, verbose=False)[0]
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    rec["eval_s"] = round(statistics.median(walls), 3)
    rec["eval_cpu_s"] = round(statistics.median(cpus), 3)
    rec["valid_recall20"] = round(float(metrics.get("valid/Recall@20", float("nan"))), 5)
    t, c = time.perf_counter(), time.process_time()
    ev.test(module, datamodule=dm, verbose=False)
    rec["test_s"] = round(time.perf_counter() - t, 3)
    rec["test_cpu_s"] = round(time.process_time() - c, 3)
    rec["eval_users"] = int(len(np.unique(dm.data.pairs(1)[0])))

    rec["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if case["model"] == "mgcn":
        dims = {m: int(x.shape[1]) for m, x in dm.data.features.items()}
        del trainer, ev, module, net
        rec["floor"] = measure_floor(rec["n_items"], dims, rec["train_batches"])
    rec["load_1m_end"] = round(os.getloadavg()[0], 2)
    return rec


def measure_floor(n_items: int, dims: dict[str, int], batches: int) -> dict:
    """What MGCN's step cannot go below here: its raw-feature work alone, timed in isolation.

    Per step MGCN projects every item's trainable raw features (``X_m W_mᵀ``, and in the
    backward ``∂W = gᵀ X`` and ``∂X = g W``: three ``I x d_m x 64`` products per modality)
    and Adam updates those ``I x Σ d_m`` parameters. Timed with the code the model runs
    (``egra.models.mgcn.project`` + fused Adam), best of 3, plus the machine's single-call
    SGEMM rate (2048³) for scale. ``floor_epoch_s`` = batches x (projections + Adam).
    """
    import torch

    from egra.models.mgcn import project

    def best(fn, n: int = 3) -> float:
        fn()
        out = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t)
        return out

    sq = torch.randn(2, 2048, 2048)
    sgemm = 2 * 2048**3 / best(lambda: sq[0] @ sq[1]) / 1e9
    feats = {m: torch.nn.Parameter(torch.randn(n_items, d)) for m, d in dims.items()}
    layers = {m: torch.nn.Linear(d, 64) for m, d in dims.items()}
    grads = {m: torch.randn(n_items, 64) for m in dims}

    def projections() -> None:
        for m in dims:
            project(layers[m], feats[m]).backward(grads[m])

    proj_s = best(projections)
    opt = torch.optim.Adam(list(feats.values()), lr=1e-3, fused=True)
    adam_s = best(opt.step)
    flops = sum(3 * 2 * n_items * d * 64 for d in dims.values())
    return {
        "sgemm_2048_gflops": round(sgemm, 1),
        "projection_products_gflop": round(flops / 1e9, 2),
        "projection_fwd_bwd_s": round(proj_s, 4),
        "projection_gflops": round(flops / proj_s / 1e9, 1),
        "feature_adam_s": round(adam_s, 4),
        "feature_params_m": round(sum(n_items * d for d in dims.values()) / 1e6, 1),
        "floor_epoch_s": round(batches * (proj_s + adam_s), 2),
    }


def child_main(case_json: str) -> None:
    rec = run_case(json.loads(case_json))
    print("RESULT " + json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------------------
# Parent side


def _run_subprocess(case: dict, timeout: float) -> dict:
    env = dict(os.environ)
    # torch.set_num_threads does the limiting; keep other BLAS pools from oversubscribing.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(case["threads"])
    t = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--run-case", json.dumps(case)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(ROOT),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-15:]
        return {"error": f"exit {out.returncode}", "stderr_tail": tail}
    rec = json.loads(lines[-1][len("RESULT ") :])
    rec["case_wall_s"] = round(time.perf_counter() - t, 1)
    return rec


def _add_reference(records: list[dict]) -> None:
    mgcn_epoch = {r["threads"]: r.get("epoch_s_median") for r in records if r["model"] == "mgcn"}
    mgcn_cpu = {r["threads"]: r.get("epoch_cpu_s_median") for r in records if r["model"] == "mgcn"}
    for r in records:
        if "error" in r:
            continue
        ref = REFERENCE.get(r["model"])
        r["reference"] = ref
        r["targets"] = TARGETS.get(r["model"])
        if ref is not None:
            r["epoch_ratio"] = round(r["epoch_s_median"] / ref["epoch_s"], 3)
            r["epoch_cpu_ratio"] = round(r["epoch_cpu_s_median"] / ref["epoch_s"], 3)
            r["eval_ratio"] = round(r["eval_s"] / ref["eval_s"], 3)
            r["graph_build_ratio"] = round(r["graph_build_s"] / ref["graph_build_s"], 3)
        else:
            r["eval_ratio"] = round(r["eval_s"] / REFERENCE["mgcn"]["eval_s"], 3)
            if mgcn_epoch.get(r["threads"]):
                r["epoch_vs_mgcn"] = round(r["epoch_s_median"] / mgcn_epoch[r["threads"]], 3)
                r["epoch_cpu_vs_mgcn"] = round(r["epoch_cpu_s_median"] / mgcn_cpu[r["threads"]], 3)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(records: list[dict]) -> None:
    head = (
        f"{'model':<9} {'thr':>3} {'epoch s':>8} {'cpu s':>7} {'ref s':>6} {'ratio':>6} {'cpu':>5} "
        f"{'eval s':>7} {'cpu s':>6} {'ratio':>6} {'graph s':>8} {'ckpt s':>7} {'async':>6} "
        f"{'peak MB':>8} {'load':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in records:
        if "error" in r:
            print(f"{r['model']:<9} {r['threads']:>3}  ERROR {r['error']}")
            continue
        ref = (r.get("reference") or {}).get("epoch_s")
        is_egra = "epoch_ratio" not in r
        ratio = r.get("epoch_vs_mgcn") if is_egra else r.get("epoch_ratio")
        cpu_ratio = r.get("epoch_cpu_vs_mgcn") if is_egra else r.get("epoch_cpu_ratio")
        tag = "*" if is_egra else " "
        print(
            f"{r['model']:<9} {r['threads']:>3} {r['epoch_s_median']:>8.2f} {r['epoch_cpu_s_median']:>7.2f} "
            f"{_fmt(ref, '>6.1f')} {_fmt(ratio, '>5.2f')}{tag} {_fmt(cpu_ratio, '>5.2f')} "
            f"{r['eval_s']:>7.2f} {r['eval_cpu_s']:>6.2f} {r['eval_ratio']:>6.2f} {r['graph_build_s']:>8.2f} "
            f"{r['ckpt_s']:>7.2f} {r.get('ckpt_async_blocking_s', float('nan')):>6.2f} "
            f"{r['peak_mb']:>8.0f} {r['load_1m_start']:>5.1f}"
        )
    for r in records:
        f = r.get("floor")
        if f:
            print(
                f"MGCN floor at {r['threads']} thread(s): raw-feature projections {f['projection_fwd_bwd_s']:.3f} s "
                f"({f['projection_products_gflop']} GFLOP at {f['projection_gflops']} GFLOP/s; one 2048³ SGEMM runs at "
                f"{f['sgemm_2048_gflops']} GFLOP/s) + Adam on {f['feature_params_m']}M feature parameters "
                f"{f['feature_adam_s']:.3f} s per step = {f['floor_epoch_s']:.1f} s per epoch before any graph or loss work"
            )
    print(
        "epoch s / eval s: wall-clock medians; cpu s: process CPU time of the same epochs / passes. "
        "ratio: ours / MMRec's reference (1 thread, another machine), on wall time "
        "and on CPU time; * EGRA: / our MGCN at the same thread count. EGRA's eval ratio is "
        "to MGCN's reference. ckpt s: one synchronous checkpoint save; async: what the "
        "training loop waits for with AsyncCheckpointIO. load: 1-min load average at the "
        "case's start (2 cores)."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-case", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="smoke run: small preset, 2 epochs")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", default=None, help="comma list (default: 1 and all cores)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per case (default 4; quick 2)")
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--preset", default=None, help="synthetic preset (default baby; quick: small)")
    p.add_argument("--root-dir", default=str(ROOT), help="paths.root_dir (data under <root>/data)")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the output file's records of other (model, threads) cases, replace these",
    )
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args()
    if args.run_case:
        child_main(args.run_case)
        return

    preset = args.preset or ("small" if args.quick else "baby")
    epochs = args.epochs or (2 if args.quick else 4)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [1, os.cpu_count() or 1]
    threads = list(dict.fromkeys(threads))
    out = (
        Path(args.out)
        if args.out
        else DEFAULT_OUT.with_name("train_throughput_quick.json" if args.quick else DEFAULT_OUT.name)
    )

    from egra.data.synthetic import ensure_synthetic

    t = time.perf_counter()
    folder = ensure_synthetic(Path(args.root_dir) / "data" / "synthetic", preset, 0)
    print(f"data: {folder} ({time.perf_counter() - t:.1f}s)", flush=True)

    records = []
    for th in threads:
        for model in args.models.split(","):
            case = {
                "model": model,
                "threads": th,
                "preset": preset,
                "epochs": epochs,
                "eval_repeats": args.eval_repeats,
                "root_dir": args.root_dir,
            }
            print(f"running {model} threads={th} ...", flush=True)
            rec = {"model": model, "threads": th, "preset": preset, **_run_subprocess(case, args.timeout)}
            records.append(rec)
            if "error" in rec:
                print(f"  error: {rec['error']}", *rec.get("stderr_tail", []), sep="\n  ", flush=True)
            else:
                print(
                    f"  epoch {rec['epoch_s_median']:.2f}s (cpu {rec['epoch_cpu_s_median']:.2f}s), "
                    f"eval {rec['eval_s']:.2f}s, graphs {rec['graph_build_s']:.2f}s, "
                    f"peak {rec['peak_mb']:.0f} MB",
                    flush=True,
                )
    meta = {
        "epoch_measured_via": "lightning.Trainer.fit(RecommenderModule, RecDataModule), limit_val_batches=0",
        "eval_measured_via": "lightning.Trainer.validate (full ranking of all valid users)",
        "reference_source": "MMRec timings measured on another machine (1 thread, 2-core CPU)",
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_revision(ROOT),
        "dirty": git_dirty(ROOT),
    }
    records = [{**r, "meta": meta} for r in records]
    if args.merge and out.exists():
        records = _merge(json.loads(out.read_text()), records)
    _add_reference(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    print()
    print_table(records)
    print(f"\nwrote {out}")


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with its (model, threads) cases that ``new`` measured replaced, in ``old``'s order."""
    key = lambda r: (r["model"], r["threads"], r.get("preset"))  # noqa: E731
    fresh = {key(r): r for r in new}
    merged = [fresh.pop(key(r), r) for r in old]
    return merged + list(fresh.values())


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
