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

Ratios are against floors measured in the same process, on the same machine and at the
same thread count, never against timings taken elsewhere. They are ratios of process CPU
time, which waiting for a core does not inflate (on a shared machine wall times of the same
work differ by more than the effects measured here); the wall-clock figures are recorded
beside them.

* ``sgemm_2048_gflops`` — the case's single-call SGEMM rate (``2048³``, best of 3, on CPU
  time), the scale of the floors below (``sgemm_2048_gflops_wall`` on wall time);
* ``plain_epoch_cpu_s`` — the same model's forward/backward/optimizer work on the same
  batches in a bare torch loop (no Lightning, no sampler, no logging); ``epoch_vs_plain`` =
  ``epoch_cpu_s_median / plain_epoch_cpu_s`` is what the training loop adds on top;
* MGCN/EGRA ``floor`` — their raw-feature work alone (projections forward + backward and
  fused Adam on the feature tables, timed in isolation); ``epoch_vs_floor`` =
  ``epoch_cpu_s_median / floor.floor_epoch_cpu_s``; ``floor.sgemm_epoch_s`` is the
  projections' FLOPs at the SGEMM rate;
* ``eval_floor_s`` — the ``users x items x d`` score products of one pass at the SGEMM
  rate; ``eval_vs_floor`` = ``eval_cpu_s / eval_floor_s``;
* ``epoch_vs_mgcn`` (EGRA) — against the MGCN case of the same run and thread count.

The command is recorded in every record (``meta.command``); ``bench/results/
train_throughput.md`` (written next to the JSON) holds the table the docs embed.

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
    # This process's matrix-product speed right now: the unit of the floors below.
    rec["sgemm_2048_gflops"], rec["sgemm_2048_gflops_wall"] = sgemm_gflops()
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
    plain_wall, plain_cpu = plain_loop_epochs(module, dm, int(case["epochs"]))
    rec["plain_epoch_s_all"], rec["plain_epoch_cpu_s_all"] = plain_wall, plain_cpu
    rec["plain_epoch_s"] = round(statistics.median(plain_wall[keep]), 3)
    rec["plain_epoch_cpu_s"] = round(statistics.median(plain_cpu[keep]), 3)
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
    # The score products of one pass (users x items x d) at this process's SGEMM rate.
    dim = int(cfg.model.embedding_dim)
    rec["eval_floor_s"] = round(
        2 * rec["eval_users"] * rec["n_items"] * dim / (rec["sgemm_2048_gflops"] * 1e9), 4
    )

    rec["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if case["model"] in ("mgcn", "egra"):
        dims = {m: int(x.shape[1]) for m, x in dm.data.features.items()}
        del trainer, ev, module, net
        rec["floor"] = measure_floor(rec["n_items"], dims, rec["train_batches"], rec["sgemm_2048_gflops"])
    rec["load_1m_end"] = round(os.getloadavg()[0], 2)
    return rec


def sgemm_gflops() -> tuple[float, float]:
    """GFLOP/s of one ``2048 x 2048`` float32 product at the current thread count, best of 3:
    on process CPU time, and on wall time."""
    import torch

    sq = torch.randn(2, 2048, 2048)
    wall, cpu = _best(lambda: sq[0] @ sq[1])
    flop = 2 * 2048**3
    return round(flop / cpu / 1e9, 1), round(flop / wall / 1e9, 1)


def _best(fn, n: int = 3) -> tuple[float, float]:
    """Best wall and best process CPU seconds of ``n`` calls of ``fn`` (after one warm-up)."""
    fn()
    wall = cpu = float("inf")
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu


def plain_loop_epochs(module, dm, epochs: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU seconds per epoch of the model's own work in a bare torch loop.

    The batches of one epoch are drawn once, up front; each epoch then runs, per batch,
    ``net.loss`` forward, backward and a step of the configured optimizer (a fresh one, as
    the training run builds it): what a training step computes, without Lightning, the
    sampler or the logging.
    """
    net = module.net
    net.train()
    batches = [(b[0], b[1], b[2]) for b in dm.train_dataloader()]
    opt = module.optimizer_factory(params=[p for p in net.parameters() if p.requires_grad])
    walls, cpus = [], []
    for _ in range(epochs):
        t, c = time.perf_counter(), time.process_time()
        for users, pos, neg in batches:
            opt.zero_grad(set_to_none=True)
            net.loss(users, pos, neg)["loss"].backward()
            opt.step()
        walls.append(round(time.perf_counter() - t, 3))
        cpus.append(round(time.process_time() - c, 3))
    del opt
    return walls, cpus


def measure_floor(n_items: int, dims: dict[str, int], batches: int, sgemm: float) -> dict:
    """What an MGCN/EGRA step cannot go below here: its raw-feature work alone, timed in isolation.

    Per step MGCN (and EGRA, which shares its encoders) projects every item's trainable raw
    features (``X_m W_mᵀ``, and in the backward ``∂W = gᵀ X`` and ``∂X = g W``: three
    ``I x d_m x 64`` products per modality) and Adam updates those ``I x Σ d_m`` parameters.
    Timed with the code the model runs (``egra.models.mgcn.project`` + fused Adam), best of 3.
    ``floor_epoch_cpu_s`` = batches x (projections + Adam) on CPU time (``floor_epoch_s`` on
    wall time); ``sgemm_epoch_s`` = batches x the projections' FLOPs at the case's SGEMM
    rate ``sgemm`` (GFLOP/s).
    """
    import torch

    from egra.models.mgcn import project

    feats = {m: torch.nn.Parameter(torch.randn(n_items, d)) for m, d in dims.items()}
    layers = {m: torch.nn.Linear(d, 64) for m, d in dims.items()}
    grads = {m: torch.randn(n_items, 64) for m in dims}

    def projections() -> None:
        for m in dims:
            project(layers[m], feats[m]).backward(grads[m])

    proj_s, proj_cpu = _best(projections)
    opt = torch.optim.Adam(list(feats.values()), lr=1e-3, fused=True)
    adam_s, adam_cpu = _best(opt.step)
    flops = sum(3 * 2 * n_items * d * 64 for d in dims.values())
    return {
        "projection_products_gflop": round(flops / 1e9, 2),
        "projection_fwd_bwd_s": round(proj_s, 4),
        "projection_cpu_s": round(proj_cpu, 4),
        "projection_gflops": round(flops / proj_cpu / 1e9, 1),
        "feature_adam_s": round(adam_s, 4),
        "feature_adam_cpu_s": round(adam_cpu, 4),
        "feature_params_m": round(sum(n_items * d for d in dims.values()) / 1e6, 1),
        "floor_epoch_s": round(batches * (proj_s + adam_s), 2),
        "floor_epoch_cpu_s": round(batches * (proj_cpu + adam_cpu), 2),
        "sgemm_epoch_s": round(batches * flops / (sgemm * 1e9), 2),
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


def add_ratios(records: list[dict]) -> None:
    """Every ratio against a floor of the same case, or (EGRA) the MGCN case of the same run."""
    mgcn = {
        (r["threads"], r["meta"]["measured_at"]): r
        for r in records
        if r["model"] == "mgcn" and "error" not in r
    }
    for r in records:
        if "error" in r or "plain_epoch_cpu_s" not in r:  # a record of an older format (--merge)
            continue
        r["epoch_vs_plain"] = round(r["epoch_cpu_s_median"] / r["plain_epoch_cpu_s"], 3)
        r["eval_vs_floor"] = round(r["eval_cpu_s"] / r["eval_floor_s"], 2)
        if r.get("floor"):
            r["epoch_vs_floor"] = round(r["epoch_cpu_s_median"] / r["floor"]["floor_epoch_cpu_s"], 3)
        m = mgcn.get((r["threads"], r["meta"]["measured_at"]))
        if r["model"] == "egra" and m is not None:
            r["epoch_vs_mgcn"] = round(r["epoch_cpu_s_median"] / m["epoch_cpu_s_median"], 3)
            r["epoch_vs_mgcn_wall"] = round(r["epoch_s_median"] / m["epoch_s_median"], 3)


NAMES = {"lightgcn": "LightGCN", "mgcn": "MGCN", "egra": "EGRA"}


def markdown(records: list[dict]) -> str:
    """The results table the docs embed (``bench/results/train_throughput.md``)."""
    records = [r for r in records if "error" in r or "plain_epoch_cpu_s" in r]
    commands = sorted({r["meta"]["command"] for r in records if "command" in r["meta"]})
    meta = records[0]["meta"]
    lines = [
        "# Training throughput",
        "",
        f"Generated `{records[0]['preset']}` preset; CPU: {meta['cpu']} ({meta['cores']} cores); "
        f"commit {meta['commit'][:12]}{' (dirty)' if meta['dirty'] else ''}; measured {meta['measured_at']}.",
        *[f"Command: `{c}`" for c in commands],
        "",
        "| model | threads | SGEMM GFLOP/s | CPU s / epoch | plain loop | epoch / plain | feature floor | "
        "epoch / floor | eval CPU s | eval floor s | eval / floor | wall s / epoch | graph build s | peak MB | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {NAMES.get(r['model'], r['model'])} | {r['threads']} | error: {r['error']} |")
            continue
        f = r.get("floor") or {}
        ratio = r.get("epoch_vs_floor")
        lines.append(
            f"| {NAMES.get(r['model'], r['model'])} | {r['threads']} | {r['sgemm_2048_gflops']} | "
            f"{r['epoch_cpu_s_median']:.2f} | {r['plain_epoch_cpu_s']:.2f} | {r['epoch_vs_plain']:.2f}× | "
            f"{_fmt(f.get('floor_epoch_cpu_s'), '.2f')} | {_fmt(ratio, '.2f')}{'×' if ratio else ''} | "
            f"{r['eval_cpu_s']:.2f} | {r['eval_floor_s']:.3f} | {r['eval_vs_floor']:.1f}× | "
            f"{r['epoch_s_median']:.2f} | {r['graph_build_s']:.2f} | {r['peak_mb']:.0f} | {r['load_1m_start']:.1f} |"
        )
    lines += [
        "",
        "Times are process CPU seconds unless marked wall (medians; the first training epoch left out), and "
        "every ratio is CPU time over CPU time, so waiting for a core on a shared machine does not enter them. "
        "CPU s / epoch: the Lightning training epoch. Plain loop: the same model's loss, backward and optimizer "
        "step on the same batches in a bare torch loop, CPU s / epoch. Feature floor (MGCN, EGRA): the "
        "raw-feature projections and Adam on the feature tables alone, CPU s / epoch. Eval: one full-ranking pass "
        "over all valid users; its floor is the users × items × d score products at the SGEMM rate. Every floor "
        "is measured in the same process as its row. Load: the 1-minute load average when the row's case "
        f"started ({meta['cores']} cores).",
    ]
    for r in records:
        if r.get("epoch_vs_mgcn") is not None:
            lines += [
                "",
                f"EGRA / MGCN epoch at {r['threads']} thread(s), same run: {r['epoch_vs_mgcn']:.2f}× "
                f"(CPU time; {r['epoch_vs_mgcn_wall']:.2f}× wall).",
            ]
    return "\n".join(lines) + "\n"


def _fmt(v, spec: str) -> str:
    return format("-", spec.split(".")[0]) if v is None else format(v, spec)


def print_table(records: list[dict]) -> None:
    head = (
        f"{'model':<9} {'thr':>3} {'sgemm':>6} {'epoch s':>8} {'cpu s':>7} {'plain':>7} {'/plain':>6} "
        f"{'floor':>7} {'/floor':>6} {'eval cpu':>8} {'/floor':>7} {'graph s':>8} {'ckpt s':>7} {'peak MB':>8} {'load':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in records:
        if "error" in r:
            print(f"{r['model']:<9} {r['threads']:>3}  ERROR {r['error']}")
            continue
        if "plain_epoch_cpu_s" not in r:
            continue
        f = r.get("floor") or {}
        print(
            f"{r['model']:<9} {r['threads']:>3} {r['sgemm_2048_gflops']:>6.1f} {r['epoch_s_median']:>8.2f} "
            f"{r['epoch_cpu_s_median']:>7.2f} {r['plain_epoch_cpu_s']:>7.2f} {r['epoch_vs_plain']:>6.2f} "
            f"{_fmt(f.get('floor_epoch_cpu_s'), '>7.2f')} {_fmt(r.get('epoch_vs_floor'), '>6.2f')} "
            f"{r['eval_cpu_s']:>8.2f} {r['eval_vs_floor']:>7.1f} {r['graph_build_s']:>8.2f} {r['ckpt_s']:>7.2f} "
            f"{r['peak_mb']:>8.0f} {r['load_1m_start']:>5.1f}"
        )
    print(
        "sgemm: GFLOP/s of one 2048³ product in the case's process (CPU time). epoch s: wall median; cpu s: "
        "process CPU time of the same epochs. plain: the same model work in a bare torch loop (CPU s); floor "
        "(MGCN, EGRA): raw-feature projections + Adam alone (CPU s); every ratio is CPU time over CPU time. "
        "eval /floor: one valid pass over its score products at the SGEMM rate. load: 1-min load average at "
        "the case's start."
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
    p.add_argument(
        "--markdown",
        action="store_true",
        help="measure nothing: re-write the .md table next to the output JSON from that JSON",
    )
    args = p.parse_args()
    if args.run_case:
        child_main(args.run_case)
        return
    if args.markdown:
        src = Path(args.out) if args.out else DEFAULT_OUT
        src.with_suffix(".md").write_text(markdown(json.loads(src.read_text())))
        print(f"wrote {src.with_suffix('.md')}")
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
        "command": " ".join(["python", "bench/train_throughput.py", *sys.argv[1:]]),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_revision(ROOT),
        "dirty": git_dirty(ROOT),
    }
    records = [{**r, "meta": meta} for r in records]
    if args.merge and out.exists():
        records = _merge(json.loads(out.read_text()), records)
    add_ratios(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(records))
    print()
    print_table(records)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


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
