"""Benchmark: MGCN / EGRA training steps on a large catalog, whole tables vs the batch's rows.

On a large catalog one batch of 2048 reads a small part of the graph: its users' items, its
items' users and their item-graph neighbours. Past a size, the lower LightGCN layer and
the item-modality views are then computed on those rows only
(``egra.graphs.sparse.MAX_ROW_SUBSET``; the forward sums are the same term for term). This times MGCN
training steps (loss, backward, fused Adam) both ways on the catalog of ``bench/scale.py``
(generated, 200k items / 2M interactions by default), one torch thread, and reports how
much of the catalog a batch reads.

The modality kNN graphs are built with IVF (``method="ivf"``) to keep the set-up short;
the step's cost depends on their size (10 neighbours per item), not on how they were found.

    python bench/batch_subsets.py                 # 200k items, 10 timed steps per mode
    python bench/batch_subsets.py --items 20000 --interactions 200000 --users 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from egra.pipeline.io import git_dirty, git_revision
from scale import ensure_dataset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "batch_subsets.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--interactions", type=int, default=2_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work-dir", default=None, help="where the data go (default: a temp dir)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)

    from egra.data.datamodule import RecDataModule
    from egra.graphs import modality_graphs, sparse
    from egra.models.mgcn import MGCN

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="egra-subsets-"))
    folder = work / "data" / f"scale_{args.items}_{args.interactions}"
    ensure_dataset(folder, n_users=args.users, n_items=args.items, n_inter=args.interactions)
    dm = RecDataModule(source="mmrec", root=str(folder), batch_size=2048, require_features=True)
    dm.setup("fit")
    d = dm.data
    users, items = d.pairs(0)
    torch.manual_seed(0)
    t = time.perf_counter()
    net = MGCN(
        n_users=d.n_users,
        n_items=d.n_items,
        train_users=users,
        train_items=items,
        features=d.features,
        modality_graphs=modality_graphs(d.features, 10, method="ivf", device="cpu"),
    )
    build_s = time.perf_counter() - t
    print(f"model built in {build_s:.1f}s", flush=True)
    opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=1e-3, fused=True)
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.steps + 2)]

    b = batches[0]
    uu, ii = torch.unique(b[0]), torch.unique(torch.cat([b[1], b[2]]))
    need_items = len(net.r_hat.columns(uu, ii))
    rows = torch.cat([uu, ii + d.n_users])
    need_nodes = len(net.adj.columns(rows, rows))

    def step(batch) -> None:
        loss = net.loss(batch[0], batch[1], batch[2])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    modes = {"whole_tables": 0.0, "row_subsets": sparse.MAX_ROW_SUBSET}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode, part in modes.items():
            sparse.MAX_ROW_SUBSET = part
            for batch in batches[:2]:  # warm-up
                step(batch)
            for batch in batches[2:]:
                t = time.perf_counter()
                step(batch)
                times[mode].append(time.perf_counter() - t)
            print(
                f"round {r}: {mode}: {statistics.median(times[mode][-args.steps :]):.3f} s/step", flush=True
            )

    rec = {
        "items": d.n_items,
        "users": d.n_users,
        "train_interactions": int(len(users)),
        "batch_size": 2048,
        "threads": 1,
        "model": "mgcn (conf defaults: 64-d, 2 + 1 layers, trainable raw features), S_m by IVF",
        "batch_items_read": need_items,
        "batch_items_read_part": round(need_items / d.n_items, 4),
        "batch_layer1_nodes_read": need_nodes,
        "batch_layer1_nodes_read_part": round(need_nodes / (d.n_users + d.n_items), 4),
        "model_build_s": round(build_s, 1),
        **{f"{m}_step_s_median": round(statistics.median(v), 3) for m, v in times.items()},
        **{f"{m}_step_s": [round(x, 3) for x in v] for m, v in times.items()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_revision(ROOT),
        "dirty": git_dirty(ROOT),
    }
    rec["speedup"] = round(rec["whole_tables_step_s_median"] / rec["row_subsets_step_s_median"], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print(
        f"a batch reads {need_items:,} of {d.n_items:,} items and {need_nodes:,} of "
        f"{d.n_users + d.n_items:,} nodes of the lower layer; MGCN step "
        f"{rec['whole_tables_step_s_median']:.3f} s (whole tables) -> "
        f"{rec['row_subsets_step_s_median']:.3f} s (row subsets), x{rec['speedup']}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
