"""Gradient bytes DDP all-reduces per optimiser step, and what moving them costs on 2 CPU ranks.

DDP all-reduces the full (dense) gradient of every trainable parameter each step, whatever
the batch touched. The byte counts come from the real models' parameters: each model is
built on a small dataset with the target's feature widths, and every parameter with a row
per user or per item is scaled to the target's users / items (Amazon Baby's shape by
default). The timing all-reduces buffers of those sizes between 2 gloo processes on this
machine (loopback TCP); GPU links are far faster (see docs/multi-gpu.md) but move the same
bytes.

    python bench/ddp_traffic.py [--users 19445 --items 7050 --image-dim 4096 --text-dim 384]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from egra.graphs import modality_graphs
from egra.models import EGRA, MGCN, LightGCN
from egra.pipeline.io import git_revision

RESULTS = Path(__file__).parent / "results" / "ddp_traffic.json"
# Small stand-ins for the user and item counts: distinct from every feature width and layer
# size, so a parameter's leading dimension says whether it scales with users or items.
U0, I0 = 97, 89


def _toy(image_dim: int, text_dim: int) -> dict:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(U0), 3)
    items = rng.integers(0, I0, size=users.size)
    feats = {
        "image": rng.standard_normal((I0, image_dim)).astype(np.float32),
        "text": rng.standard_normal((I0, text_dim)).astype(np.float32),
    }
    return {"n_users": U0, "n_items": I0, "train_users": users, "train_items": items, "features": feats}


def _item_graph(n: int):
    import scipy.sparse as sp

    rows = np.arange(n).repeat(2)
    cols = (rows + np.tile([1, 2], n)) % n
    g = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n, n))
    return g.maximum(g.T).tocsr()


def gradient_bytes(net: torch.nn.Module, n_users: int, n_items: int) -> dict[str, int]:
    """Bytes of each trainable parameter's gradient at the target size, grouped by kind."""
    out = {"embeddings": 0, "feature_tables": 0, "layers": 0}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        rows = {U0: n_users, I0: n_items}.get(p.shape[0], p.shape[0])
        n = rows * int(np.prod(p.shape[1:], dtype=np.int64))
        kind = (
            "feature_tables" if name.startswith("feat_") else "embeddings" if rows != p.shape[0] else "layers"
        )
        out[kind] += n * p.element_size()
    out["total"] = sum(out.values())
    return out


def _allreduce_worker(rank: int, sizes: list[int], port: int, reps: int, queue) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    times = []
    for nbytes in sizes:
        buf = torch.ones(nbytes // 4, dtype=torch.float32)
        dist.all_reduce(buf)  # warm-up
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(buf)
        times.append((time.perf_counter() - t0) / reps)
    if rank == 0:
        queue.put(times)
    dist.destroy_process_group()


def allreduce_seconds(sizes: list[int], reps: int = 5, port: int = 29533) -> list[float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_allreduce_worker, args=(sizes, port, reps, queue), nprocs=2, join=True)
    return queue.get()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=19445)
    ap.add_argument("--items", type=int, default=7050)
    ap.add_argument("--image-dim", type=int, default=4096)
    ap.add_argument("--text-dim", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--train-rows", type=int, default=118551, help="train interactions (Baby's)")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = _toy(args.image_dim, args.text_dim)
    s_m = modality_graphs(data["features"], 10, device="cpu")  # S^m as the graph stage builds it
    models = {"lightgcn": lambda tf: LightGCN(**data)}
    models["mgcn"] = lambda tf: MGCN(**data, train_features=tf, modality_graphs=s_m)
    models["egra"] = lambda tf: EGRA(
        **data, train_features=tf, modality_graphs=s_m, item_graph=_item_graph(I0)
    )
    rows = []
    for name, make in models.items():
        for tf in (True, False) if name != "lightgcn" else (False,):
            torch.manual_seed(0)
            rec = {"model": name, "train_features": tf, **gradient_bytes(make(tf), args.users, args.items)}
            rows.append(rec)
            print(f"{name:9s} train_features={tf!s:5s} {rec['total'] / 1e6:8.1f} MB per step", flush=True)
    if not args.no_timing:
        sizes = sorted({r["total"] for r in rows})
        secs = allreduce_seconds(sizes)
        for r in rows:
            r["gloo_2rank_allreduce_s"] = round(secs[sizes.index(r["total"])], 4)
    steps = -(-args.train_rows // args.batch_size)
    for r in rows:
        r["gb_per_epoch"] = round(r["total"] * steps / 1e9, 2)
    result = {
        "shape": {
            k: getattr(args, k)
            for k in ("users", "items", "image_dim", "text_dim", "batch_size", "train_rows")
        },
        "steps_per_epoch": steps,
        "threads": 1,
        "git_revision": git_revision(),
        "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
