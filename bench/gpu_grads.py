"""GPU checks: GPU vs CPU gradients of one batch per model, bf16/fp16 autocast, a 1M-item evaluation.

    python bench/gpu_grads.py [--out bench/results/gpu_grads.json] [--items 1000000] [--eval-users 20000]

Without a CUDA device it prints one line and exits 0, writing nothing (so `bench/gpu_check.sh`
can call it anywhere). Exit 1 when a check fails (the JSON is still written):

- ``grads``: LightGCN, MGCN and EGRA built once on a generated dataset (graphs on the CPU),
  copied to the GPU; loss and every parameter gradient of the same batch, fp32 with TF32
  off, must match the CPU's to float tolerance (max abs diff / max abs <= 1e-4).
- ``autocast``: the same batch under bf16 and fp16 autocast on the GPU: finite, loss within
  3% of fp32 and gradient cosine >= 0.99 (the custom sparse/InfoNCE ops run in fp32).
- ``eval_1m``: full-ranking evaluation of ``--eval-users`` users over ``--items`` items with
  the training module's chunked scorer (time, peak GPU memory); the first chunks' metric sums
  must equal the CPU's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from egra.data.datamodule import MAX_CHUNK_SCORES
from egra.graphs import modality_graphs
from egra.models import BPRMF, EGRA, MGCN, LightGCN
from egra.pipeline.io import git_revision
from egra.training.module import RecommenderModule

RESULTS = Path(__file__).parent / "results" / "gpu_grads.json"


def make_data(n_users: int, n_items: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 8)
    items = rng.integers(0, n_items, size=users.size)
    feats = {
        "image": rng.standard_normal((n_items, 256)).astype(np.float32),
        "text": rng.standard_normal((n_items, 64)).astype(np.float32),
    }
    return {
        "n_users": n_users,
        "n_items": n_items,
        "train_users": users,
        "train_items": items,
        "features": feats,
    }


def _item_graph(n: int, seed: int = 1) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), 5)
    cols = rng.integers(0, n, size=rows.size)
    g = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n, n))
    g.data[:] = 1.0
    return g.maximum(g.T).tocsr()


def models_on(data: dict) -> dict:
    s_m = modality_graphs(data["features"], 10, device="cpu")  # S^m as the graph stage builds it
    torch.manual_seed(0)
    return {
        "lightgcn": LightGCN(**data),
        "mgcn": MGCN(**data, modality_graphs=s_m),
        "egra": EGRA(**data, modality_graphs=s_m, item_graph=_item_graph(data["n_items"])),
    }


def loss_and_grads(net, batch, autocast: torch.dtype | None = None):
    net.zero_grad(set_to_none=True)
    with torch.autocast(batch.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = net.loss(*batch)["loss"]
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in net.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def check_grads(models: dict, batch: torch.Tensor) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for name, net in models.items():
        loss_cpu, g_cpu = loss_and_grads(net, batch)
        gpu = copy.deepcopy(net).to("cuda")
        loss_gpu, g_gpu = loss_and_grads(gpu, batch.cuda())
        worst = max(
            float((g_gpu[k] - g_cpu[k]).abs().max() / g_cpu[k].abs().max().clamp_min(1e-30)) for k in g_cpu
        )
        same_params = sorted(g_cpu) == sorted(g_gpu)
        out[name] = {
            "loss_cpu": loss_cpu,
            "loss_gpu": loss_gpu,
            "max_rel_grad_diff": worst,
            "ok": bool(
                same_params and worst <= 1e-4 and abs(loss_gpu - loss_cpu) <= 1e-5 * max(1.0, abs(loss_cpu))
            ),
        }
        print(
            f"grads {name}: loss {loss_cpu:.6f} / {loss_gpu:.6f}, max rel grad diff {worst:.2e}", flush=True
        )
    return out


def check_autocast(models: dict, batch: torch.Tensor) -> dict:
    out = {}
    for name, net in models.items():
        gpu = copy.deepcopy(net).to("cuda")
        ref_loss, ref = loss_and_grads(gpu, batch.cuda())
        ref_flat = torch.cat([ref[k].flatten() for k in sorted(ref)])
        for dtype in (torch.bfloat16, torch.float16):
            try:
                loss, g = loss_and_grads(gpu, batch.cuda(), autocast=dtype)
                flat = torch.cat([g[k].flatten() for k in sorted(g)])
                cos = float(torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0))
                ok = bool(np.isfinite(loss) and torch.isfinite(flat).all() and cos >= 0.99)
                ok = ok and abs(loss - ref_loss) <= 0.03 * abs(ref_loss)
                rec = {"loss": loss, "loss_fp32": ref_loss, "grad_cosine": cos, "ok": ok}
            except Exception as err:  # a crash is the finding; report it and go on
                rec = {"error": f"{type(err).__name__}: {err}"[:500], "ok": False}
            out[f"{name}/{str(dtype).split('.')[-1]}"] = rec
            print(f"autocast {name} {dtype}: {rec}", flush=True)
    return out


def eval_batches(n_items: int, n_users: int, seed: int = 0) -> tuple[list[dict], int]:
    """Evaluation chunks as the datamodule cuts them: ~20 masked train items and 2 held-out
    items per user (random), chunk size capped by MAX_CHUNK_SCORES like the datamodule's."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(4096, MAX_CHUNK_SCORES // n_items))
    batches = []
    for start in range(0, n_users, chunk):
        users = torch.arange(start, min(start + chunk, n_users))
        mask_rows = torch.arange(users.numel()).repeat_interleave(20)
        truth_rows = torch.arange(users.numel()).repeat_interleave(2)
        batches.append(
            {
                "users": users,
                "mask_rows": mask_rows,
                "mask_items": torch.as_tensor(rng.integers(0, n_items, size=mask_rows.numel())),
                "truth_rows": truth_rows,
                "truth_items": torch.as_tensor(rng.integers(0, n_items, size=truth_rows.numel())),
            }
        )
    return batches, chunk


def eval_sums(module: RecommenderModule, device: str, batches: list[dict]) -> tuple[dict, float]:
    """Metric sums of the training module's evaluation over ``batches`` on ``device``, and seconds."""
    m = module.to(device)
    m._start_eval()
    t0 = time.perf_counter()
    for b in batches:
        m._eval_step({k: v.to(device) for k, v in b.items()})
    if device == "cuda":
        torch.cuda.synchronize()
    sums = {k: float(v) for k, v in m._sums.items()}
    m._emb, m._score_buf, m._sums = None, None, {}
    return sums, time.perf_counter() - t0


def check_eval(n_items: int, n_users: int, dim: int = 64, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    module = RecommenderModule(
        BPRMF(n_users=n_users, n_items=n_items, embedding_dim=dim), optimizer=torch.optim.Adam
    )
    batches, chunk = eval_batches(n_items, n_users, seed)
    cpu_sums, _ = eval_sums(module, "cpu", batches[:2])
    gpu_first, _ = eval_sums(module, "cuda", batches[:2])  # also the warm-up
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gpu_sums, secs = eval_sums(module, "cuda", batches)
    peak = torch.cuda.max_memory_allocated() - base
    agree = all(abs(gpu_first[k] - cpu_sums[k]) <= 1e-6 * max(1.0, abs(cpu_sums[k])) for k in cpu_sums)
    rec = {
        "n_items": n_items,
        "eval_users": n_users,
        "chunk_users": chunk,
        "seconds": round(secs, 3),
        "peak_extra_gpu_mb": round(peak / 2**20, 1),
        "recall20_sum": gpu_sums.get("Recall@20"),
        "first_chunks_match_cpu": agree,
        "ok": bool(agree),
    }
    print(f"eval {n_items} items x {n_users} users: {rec}", flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--eval-users", type=int, default=20_000)
    ap.add_argument("--grad-users", type=int, default=3000)
    ap.add_argument("--grad-items", type=int, default=2000)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_grads: skipped, no CUDA device")
        return 0
    data = make_data(args.grad_users, args.grad_items)
    models = models_on(data)
    rng = np.random.default_rng(1)
    batch = torch.as_tensor(
        np.stack(
            [
                rng.integers(0, args.grad_users, 2048),
                rng.integers(0, args.grad_items, 2048),
                rng.integers(0, args.grad_items, 2048),
            ]
        )
    )
    result = {
        "device": torch.cuda.get_device_name(0),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_revision": git_revision(),
        "grads": check_grads(models, batch),
        "autocast": check_autocast(models, batch),
        "eval_1m": check_eval(args.items, args.eval_users),
    }
    parts = [*result["grads"].values(), *result["autocast"].values(), result["eval_1m"]]
    result["ok"] = all(p["ok"] for p in parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"gpu_grads: {'ok' if result['ok'] else 'FAILED'} -> {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
