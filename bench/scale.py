"""Benchmark: the whole pipeline on a 200,000-item, 2,000,000-interaction catalog.

Proves that nothing in the pipeline is O(items²) in time or memory: it generates an
MMRec-format dataset of ``--items`` items, ``--users`` users and exactly
``--interactions`` interactions (64-d image and 32-d text features), then runs the real
pipeline code on it, stage by stage, exactly as ``egra.pipeline.train.run`` chains them
for EGRA, with the project's Hydra config (``conf/``, composed with the compose API):

1. ``load`` — read and validate the folder (``RecDataModule``);
2. ``modality_graphs`` — ``egra.pipeline.graph.build_graphs``: the FAISS kNN graphs
   ``S^m`` of both modalities (artifacts, shared by MGCN and EGRA);
3. ``pretrain_mgcn`` — ``egra.pipeline.pretrain.pretrain``: MGCN built on them, trained
   one epoch (``backbones.mgcn.max_epochs=1``) with its validation pass, then validated
   and tested at the best checkpoint, item vectors exported as an artifact;
4. ``spt_graph`` — ``egra.pipeline.graph.build_graphs``: the top-10 ``S^pt`` graph of the
   exported vectors (FAISS, exact flat search; ``S^m`` reused from the cache);
5. ``egra_init`` — EGRA built on ``S^m`` and ``S^pt`` (enhanced adjacency);
6. ``egra_fit_eval`` — ``egra.pipeline.fit.fit`` + ``egra.pipeline.evaluate.evaluate``:
   one epoch (``trainer.max_epochs=1``) with its validation, then valid and test at the
   best checkpoint.

Each stage reports wall and CPU seconds and its peak resident memory (the kernel's
high-water mark, reset before the stage through ``/proc/self/clear_refs``). Training
epochs, validation and test passes inside the stages are timed by a callback, so the
table also shows seconds per training epoch and per full-ranking evaluation of all
valid (or test) users. The run happens in a fresh subprocess (clean peak memory).

The generator (``make_dataset``) is written for this size: the project's synthetic
generator samples from a dense user x item affinity (O(users·items)), too slow here.
Here items belong to clusters with Zipf popularity, users prefer one cluster, every item
appears at least once (MMRec ids must be contiguous) and every user has at least 5
interactions (1 valid, 1 test, 3+ train, chronological-style split of a random order).

    python bench/scale.py                 # 200k items, 2M interactions, 1 thread (~1 h 45 min)
    python bench/scale.py --threads 2     # all cores (slower when other jobs share them)
    python bench/scale.py --quick         # 20k items, 200k interactions (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from egra.pipeline.io import git_dirty, git_revision
from memory import PeakMemory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONF_DIR = ROOT / "conf"
DEFAULT_OUT = HERE / "results" / "scale.json"
GENERATOR_VERSION = 1


# ----------------------------------------------------------------------------------------
# Data


def make_dataset(
    folder: Path,
    n_users: int,
    n_items: int,
    n_inter: int,
    d_image: int = 64,
    d_text: int = 32,
    n_clusters: int | None = None,
    seed: int = 0,
) -> dict:
    """Write ``folder/<name>.inter`` + ``image_feat.npy`` + ``text_feat.npy``; return a summary.

    Memory and time are O(users + items + interactions): every step is a vectorised pass
    over interactions or a per-cluster cumulative-popularity search.
    """
    import numpy as np
    import pandas as pd

    if n_inter < 5 * n_users + n_items:
        raise ValueError("need at least 5 interactions per user plus one per item")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_clusters = n_clusters or max(8, n_items // 400)

    # Items: cluster and Zipf popularity; items sorted by cluster for per-cluster sampling.
    item_cluster = rng.integers(n_clusters, size=n_items)
    pop = 1.0 / rng.permutation(np.arange(1, n_items + 1)) ** 0.8
    by_cluster = np.argsort(item_cluster, kind="stable")
    cum = np.cumsum(pop[by_cluster])
    cluster_end = np.searchsorted(item_cluster[by_cluster], np.arange(n_clusters), side="right")
    cluster_start = np.r_[0, cluster_end[:-1]]
    lo = np.where(cluster_start > 0, cum[np.maximum(cluster_start - 1, 0)], 0.0)
    hi = cum[np.maximum(cluster_end - 1, 0)]

    # Users: a home cluster and an activity level; counts sum exactly to the sampled part.
    user_cluster = rng.integers(n_clusters, size=n_users)
    n_sampled = n_inter - n_items  # one interaction per item is reserved for coverage
    weight = rng.lognormal(0.0, 1.0, size=n_users)
    extra = n_sampled - 5 * n_users
    counts = 5 + np.floor(weight / weight.sum() * extra).astype(np.int64)
    counts[rng.choice(n_users, size=n_sampled - counts.sum(), replace=False)] += 1

    # Coverage: item i once, with a random user of its cluster (or any user).
    members = np.argsort(user_cluster, kind="stable")
    u_end = np.searchsorted(user_cluster[members], np.arange(n_clusters), side="right")
    u_start = np.r_[0, u_end[:-1]]
    size = (u_end - u_start)[item_cluster]
    pick = u_start[item_cluster] + (rng.random(n_items) * np.maximum(size, 1)).astype(np.int64)
    cover_u = np.where(size > 0, members[np.minimum(pick, n_users - 1)], rng.integers(n_users, size=n_items))
    cover_i = np.arange(n_items)

    # Sampled part, in rounds until every user has its count of distinct items: 70% from
    # the home cluster (popularity-weighted), 30% from the whole catalog (all of it from
    # the third round on, so that heavy users of small clusters still finish).
    taken = np.unique(cover_u * n_items + cover_i)
    need = counts.copy()
    got_u, got_i = [cover_u], [cover_i]
    for rnd in range(100):
        todo = np.flatnonzero(need > 0)
        if todo.size == 0:
            break
        users = np.repeat(todo, (need[todo] * 1.25).astype(np.int64) + 2)
        home = rng.random(users.size) < (0.7 if rnd < 2 else 0.0)
        r = rng.random(users.size)
        c = user_cluster[users]
        target = np.where(home, lo[c] + r * (hi[c] - lo[c]), r * cum[-1])
        items = by_cluster[np.minimum(np.searchsorted(cum, target, side="right"), n_items - 1)]
        keys, first = np.unique(users * n_items + items, return_index=True)
        fresh = taken[np.minimum(np.searchsorted(taken, keys), taken.size - 1)] != keys
        keys, first = keys[fresh], first[fresh]
        # random order within each user, keep the first need[u]
        order = np.lexsort((rng.random(keys.size), keys // n_items))
        keys = keys[order]
        ku = keys // n_items
        starts = np.searchsorted(ku, ku, side="left")
        keep = (np.arange(keys.size) - starts) < need[ku]
        keys = keys[keep]
        got_u.append(keys // n_items)
        got_i.append(keys % n_items)
        need -= np.bincount(keys // n_items, minlength=n_users)
        taken = np.union1d(taken, keys)
    if need.any():
        raise RuntimeError("could not draw enough distinct items per user")
    users, items = np.concatenate(got_u), np.concatenate(got_i)
    assert users.size == n_inter, (users.size, n_inter)

    # Split per user in a random order: last ~10% test, previous ~10% valid (>= 1 each).
    order = np.lexsort((rng.random(users.size), users))
    users, items = users[order], items[order]
    n_u = np.bincount(users, minlength=n_users)
    starts = np.r_[0, np.cumsum(n_u)[:-1]]
    from_end = n_u[users] - (np.arange(users.size) - starts[users])
    n_test = np.maximum(1, np.rint(0.1 * n_u)).astype(np.int64)
    n_val = np.maximum(1, np.rint(0.1 * n_u)).astype(np.int64)
    label = np.zeros(users.size, dtype=np.int8)
    label[from_end <= n_test[users] + n_val[users]] = 1
    label[from_end <= n_test[users]] = 2

    # Features: cluster centres seen through a random map, plus item-level noise.
    centres = rng.standard_normal((n_clusters, 16)).astype(np.float32)
    latent = centres[item_cluster] + 0.5 * rng.standard_normal((n_items, 16), dtype=np.float32)
    w_img = rng.standard_normal((16, d_image), dtype=np.float32) / 4
    w_txt = rng.standard_normal((16, d_text), dtype=np.float32) / 4
    image = np.maximum(latent @ w_img + 0.3 * rng.standard_normal((n_items, d_image), dtype=np.float32), 0)
    text = np.tanh(latent @ w_txt + 0.3 * rng.standard_normal((n_items, d_text), dtype=np.float32))

    name = folder.name
    frame = pd.DataFrame({"userID": users, "itemID": items, "x_label": label})
    frame.to_csv(folder / f"{name}.inter", sep="\t", index=False)
    np.save(folder / "image_feat.npy", image.astype(np.float32))
    np.save(folder / "text_feat.npy", text.astype(np.float32))
    summary = {
        "users": int(n_users),
        "items": int(n_items),
        "interactions": int(n_inter),
        "train": int((label == 0).sum()),
        "valid": int((label == 1).sum()),
        "test": int((label == 2).sum()),
        "image_dim": d_image,
        "text_dim": d_text,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
    }
    (folder / "scale_manifest.json").write_text(json.dumps(summary, indent=1))
    return summary


def ensure_dataset(folder: Path, **kwargs) -> tuple[dict, float]:
    """The dataset in ``folder`` (generated unless a matching manifest is there), seconds spent."""
    manifest = folder / "scale_manifest.json"
    want = {
        "users": kwargs["n_users"],
        "items": kwargs["n_items"],
        "interactions": kwargs["n_inter"],
        "seed": kwargs.get("seed", 0),
        "generator_version": GENERATOR_VERSION,
    }
    if manifest.exists():
        have = json.loads(manifest.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return have, 0.0
    t = time.perf_counter()
    summary = make_dataset(folder, **kwargs)
    return summary, time.perf_counter() - t


# ----------------------------------------------------------------------------------------
# Child: the pipeline, stage by stage


def run_child(case: dict) -> dict:
    import torch

    torch.set_num_threads(int(case["threads"]))
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import egra.pipeline.fit as fit_mod
    from egra.pipeline import evaluate as eval_mod
    from egra.pipeline import graph as graph_mod
    from egra.pipeline import load as load_mod
    from egra.pipeline import pretrain as pre_mod

    work = Path(case["work_dir"])
    overrides = [
        f"paths.root_dir={work}",
        "data=mmrec",
        f"data.root={case['data_dir']}",
        "data.require_features=true",
        "model=egra",
        "backbones.mgcn.max_epochs=1",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"threads={case['threads']}",
        "graph.device=cpu",
        "skip_if_done=false",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")

    events: list[dict] = []
    stage = {"name": ""}

    class Timer(L.Callback):
        """Seconds of each training epoch (up to its validation), validation and test pass."""

        def _mark(self, what: str) -> None:
            self._t, self._c, self._what = time.perf_counter(), time.process_time(), what

        def _done(self, trainer) -> None:
            events.append(
                {
                    "stage": stage["name"],
                    "what": self._what,
                    "fn": str(trainer.state.fn.value),
                    "seconds": round(time.perf_counter() - self._t, 2),
                    "cpu_seconds": round(time.process_time() - self._c, 2),
                }
            )

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._mark("train_epoch")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            # A progress line now and then (progress bars are off to keep the log readable).
            done = batch_idx + 1
            total = trainer.num_training_batches
            if done % 50 == 0 or done == total:
                rate = (time.perf_counter() - self._t) / done
                print(f"    {stage['name']}: batch {done}/{total}, {rate:.2f} s/batch", flush=True)

        def on_validation_start(self, trainer, pl_module) -> None:
            if trainer.state.fn.value == "fit" and getattr(self, "_what", "") == "train_epoch":
                self._done(trainer)
            self._mark("validation")

        def on_validation_end(self, trainer, pl_module) -> None:
            self._done(trainer)

        def on_test_start(self, trainer, pl_module) -> None:
            self._mark("test")

        def on_test_end(self, trainer, pl_module) -> None:
            self._done(trainer)

    original = fit_mod._callbacks
    fit_mod._callbacks = lambda c: [*original(c), Timer()]

    stages: list[dict] = []
    result: dict = {"load_1m_start": round(os.getloadavg()[0], 2)}

    def timed(name: str, fn):
        stage["name"] = name
        peak = PeakMemory()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        rec = {
            "stage": name,
            "seconds": round(time.perf_counter() - t, 2),
            "cpu_seconds": round(time.process_time() - c, 2),
            **peak.stop(),
        }
        stages.append(rec)
        print(f"  {name}: {rec['seconds']:.1f}s, peak {rec['peak_rss_mb']:.0f} MB", flush=True)
        return out

    load_mod.setup_run(cfg)
    dm = timed("load", lambda: load_mod.load_data(cfg))
    result["data"] = dm.data.summary()
    spec = graph_mod.GraphSpec.of(cfg.graph, cfg.model)
    bgraphs = timed(
        "modality_graphs", lambda: graph_mod.build_graphs(cfg, dm, pre_mod.backbone_spec(cfg, "mgcn"))
    )
    emb = timed("pretrain_mgcn", lambda: pre_mod.pretrain(cfg, dm, "mgcn", bgraphs))
    graphs = timed("spt_graph", lambda: graph_mod.build_graphs(cfg, dm, spec, emb))
    info = graphs.info
    net = timed(
        "egra_init",
        lambda: fit_mod.build_net(cfg.model, dm, graphs.model_inputs()),
    )

    def fit_eval():
        module = fit_mod.build_module(cfg, dm, net, graphs.names())
        return eval_mod.evaluate(cfg, dm, fit_mod.fit(cfg, dm, module, Path(cfg.paths.output_dir)))

    metrics = timed("egra_fit_eval", fit_eval)
    fit_mod._callbacks = original

    backbone = emb.manifest.get("metrics") or {}
    result.update(
        {
            "stages": stages,
            "events": events,
            "graph": {k: info[k] for k in ("graph_nnz", "graph_reused", "pretrain_reused") if k in info},
            "mgcn": {k: backbone.get(k) for k in ("valid/Recall@20", "test/Recall@20", "test/NDCG@20")},
            "egra": {k: metrics.get(k) for k in ("valid/Recall@20", "test/Recall@20", "test/NDCG@20")},
            "train_batches": len(dm.train_dataloader()),
            "eval_chunk_users": dm.eval_chunk_size(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_1m_end": round(os.getloadavg()[0], 2),
        }
    )
    return result


# ----------------------------------------------------------------------------------------
# Parent


def _summary_rows(rec: dict) -> list[tuple[str, float, float, float]]:
    rows = [(s["stage"], s["seconds"], s["cpu_seconds"], s["peak_rss_mb"]) for s in rec["stages"]]
    for ev in rec["events"]:
        label = f"  {ev['stage']}: {ev['what']} ({ev['fn']})"
        rows.append((label, ev["seconds"], ev["cpu_seconds"], float("nan")))
    return rows


def print_table(rec: dict) -> None:
    d = rec["data"]
    print(
        f"data: {d['users']:,} users, {d['items']:,} items, {d['train'] + d['valid'] + d['test']:,} "
        f"interactions (train {d['train']:,}), features {d.get('image_dim')}/{d.get('text_dim')}-d; "
        f"threads {rec['threads']}; {rec['train_batches']} batches/epoch; eval chunks of "
        f"{rec['eval_chunk_users']} users"
    )
    head = f"{'stage':<48} {'wall s':>9} {'cpu s':>9} {'peak RSS MB':>12}"
    print(head)
    print("-" * len(head))
    for name, wall, cpu, peak in _summary_rows(rec):
        peak_s = "" if peak != peak else f"{peak:>12.0f}"
        print(f"{name:<48} {wall:>9.1f} {cpu:>9.1f} {peak_s:>12}")
    total = sum(s["seconds"] for s in rec["stages"])
    print("-" * len(head))
    print(f"{'total (pipeline)':<48} {total:>9.1f} {'':>9} {rec['peak_rss_mb']:>12.0f}")
    print(
        f"MGCN valid/test Recall@20 {rec['mgcn'].get('valid/Recall@20')} / {rec['mgcn'].get('test/Recall@20')}; "
        f"EGRA {rec['egra'].get('valid/Recall@20')} / {rec['egra'].get('test/Recall@20')}; "
        f"S^pt nnz {rec['graph'].get('graph_nnz')}; load {rec['load_1m_start']} -> {rec['load_1m_end']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-case", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="20k items, 200k interactions, 10k users")
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--interactions", type=int, default=2_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    p.add_argument("--work-dir", default=None, help="data, artifacts and the run (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--out", default=None)
    p.add_argument("--timeout", type=float, default=4 * 3600)
    args = p.parse_args()
    if args.run_case:
        print("RESULT " + json.dumps(run_child(json.loads(args.run_case))), flush=True)
        return
    if args.quick:
        args.items, args.interactions, args.users = 20_000, 200_000, 10_000
    out = (
        Path(args.out)
        if args.out
        else DEFAULT_OUT.with_name("scale_quick.json" if args.quick else "scale.json")
    )

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="egra-scale-"))
    data_dir = work / "data" / f"scale_{args.items}_{args.interactions}"
    summary, gen_s = ensure_dataset(
        data_dir, n_users=args.users, n_items=args.items, n_inter=args.interactions
    )
    how = f"generated in {gen_s:.1f}s" if gen_s else "reused"
    print(f"data: {data_dir} ({how})", flush=True)

    import shutil

    for sub in ("artifacts", "run", "logs"):  # the data stay; every stage runs afresh
        shutil.rmtree(work / sub, ignore_errors=True)
    case = {"threads": args.threads, "work_dir": str(work), "data_dir": str(data_dir)}
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    t = time.perf_counter()
    # The child's stderr (warnings) goes to a file: a pipe read only at the end could fill
    # up during a run of hours and block the child.
    err_path = work / "child_stderr.log"
    err_file = open(err_path, "w")  # noqa: SIM115 - closed after the child exits
    proc = subprocess.Popen(
        [sys.executable, __file__, "--run-case", json.dumps(case)],
        stdout=subprocess.PIPE,
        stderr=err_file,
        text=True,
        env=env,
        cwd=str(ROOT),
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # stage lines as they come
        lines.append(line)
        if not line.startswith("RESULT "):
            print(line, end="", flush=True)
    try:
        proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"timeout after {args.timeout:.0f}s") from None
    finally:
        err_file.close()
    err = err_path.read_text(errors="replace")
    found = [x for x in lines if x.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        print(err[-5000:], file=sys.stderr)
        raise SystemExit(f"pipeline failed (exit {proc.returncode})")
    rec = json.loads(found[-1][len("RESULT ") :])
    rec.update(
        {
            "threads": args.threads,
            "generated": summary,
            "generate_s": round(gen_s, 1),
            "child_wall_s": round(time.perf_counter() - t, 1),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": git_revision(ROOT),
            "dirty": git_dirty(ROOT),
            "pipeline": "egra.pipeline: graph (S^m) -> pretrain(mgcn) -> graph (S^pt) -> build_net -> fit -> evaluate",
            "overrides": "model=egra backbones.mgcn.max_epochs=1 trainer.max_epochs=1 graph.device=cpu logger=none",
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print()
    print_table(rec)
    print(f"\nwrote {out}")
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
