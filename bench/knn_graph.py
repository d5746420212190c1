"""Benchmark: building top-10 cosine kNN item–item graphs on the CPU.

Cases (default = full run):

* exact graphs, N = 7,050 / 23,033 / 63,001 items (Baby / Clothing / Elec sizes) at
  d = 4096 and d = 64, built with ``egra.graphs.knn.knn_graph`` (MGCN convention: top-10
  with self, weighted, directed, ``w/sqrt(r_i r_j)``) using ``method="flat"`` (FAISS
  ``IndexFlatIP``) and ``method="flat_sym"`` (upper-triangle blocks of ``X Xᵀ``), against a
  ``dense_torch`` baseline (full ``X̄ X̄ᵀ`` in torch, then ``topk``; skipped where the
  ``N²`` matrix would not fit the memory cap);
* approximate graphs at 1,000,000 x 64 with IVF and HNSW (EGRA's ``S^pt`` convention:
  10 other items, binary, symmetrised). The search setting (``nprobe`` / ``efSearch``)
  is tuned on 1,000 held-out queries to the smallest value with recall@10 >= 0.95, then
  every item is queried, and recall@10 is reported on 2,000 *other* queries against
  an exact flat search of just those queries.

Each case runs in a fresh subprocess. Peak memory: the child measures its resident
set after its data exist (``data_mb`` is the matrix itself), resets the kernel's
high-water mark (``/proc/self/clear_refs``; a 10 ms RSS poller is the fallback) and
reports ``peak_mb`` = high-water mark minus that baseline, i.e. the extra memory of
the build. ``seconds`` is wall time, ``cpu_seconds`` the process CPU time; both are
affected when other jobs share the cores, so each record also has the 1-minute load
average at its start.

Data: a deterministic Gaussian mixture ("clustered"): sqrt(N) centres ~ N(0, I),
cluster sizes ~ 1/sqrt(rank), per-cluster spread 0.6-1.4, like real embeddings in
having dense neighbourhoods (uniform random vectors are the worst case for ANN).

    python bench/knn_graph.py            # full run (~40 min on a busy 2-core machine)
    python bench/knn_graph.py --quick    # smoke run (~2 min), writes knn_graph_quick.json
    python bench/knn_graph.py --only flat_sym --n 63001 --d 4096 --case-timeout 2400 --merge
                                         # re-run chosen cases into the existing JSON

Exact cases whose time, extrapolated as N² from the previous size of the same method,
exceeds ``--case-timeout`` are skipped with that prediction recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import PeakMemory

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "knn_graph.json"
K = 10
RECALL_TARGET = 0.95


# ----------------------------------------------------------------------------------------
# Child side


def make_data(n: int, d: int, seed: int = 0):
    """Deterministic clustered float32 vectors (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = max(16, int(round(math.sqrt(n))))
    centers = rng.standard_normal((c, d), dtype=np.float32)
    w = 1.0 / np.sqrt(np.arange(1, c + 1))
    labels = rng.choice(c, size=n, p=w / w.sum())
    spread = rng.uniform(0.6, 1.4, size=c).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        lab = labels[s:e]
        x[s:e] = centers[lab] + spread[lab, None] * rng.standard_normal((e - s, d), dtype=np.float32)
    return x


def _dense_torch_graph(x, k: int):
    """The dense baseline: full cosine matrix in torch, top-k per row, MGCN normalisation."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from egra.graphs.adjacency import sym_normalize

    xt = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    sim = xt @ xt.T
    vals, idx = sim.topk(k, dim=1)
    del sim
    n = x.shape[0]
    rows = np.repeat(np.arange(n), k)
    g = sp.csr_matrix(
        (vals.clamp_min(0).numpy().ravel(), (rows, idx.numpy().ravel())), shape=(n, n), dtype=np.float32
    )
    g.eliminate_zeros()
    return sym_normalize(g)


def run_exact_case(case: dict) -> dict:
    import scipy.sparse as sp

    x = make_data(case["n"], case["d"], seed=case["seed"])
    rec = {"data_mb": round(x.nbytes / 2**20, 1)}
    if case["method"] == "dense_torch":
        import torch

        torch.set_num_threads(case["threads"])
    from egra.graphs.knn import graph_stats, knn_graph

    mem = PeakMemory()
    t, c = time.perf_counter(), time.process_time()
    if case["method"] == "dense_torch":
        g = _dense_torch_graph(x, K)
    else:
        method = {"faiss_flat": "flat", "flat_sym": "flat_sym"}[case["method"]]
        g = knn_graph(x, K, method=method, device="cpu")
    rec["seconds"] = round(time.perf_counter() - t, 2)
    rec["cpu_seconds"] = round(time.process_time() - c, 2)
    rec.update(mem.stop())
    rec["graph"] = graph_stats(g)
    if case.get("graph_out"):  # kept for the agreement check between methods
        sp.save_npz(case["graph_out"], g)
    return rec


def _recall(found, exact) -> float:
    import numpy as np

    hits = [len(set(a[a >= 0]) & set(b)) for a, b in zip(found, exact)]
    return float(np.sum(hits) / exact.size)


def run_ann_case(case: dict) -> dict:
    import numpy as np
    import scipy.sparse as sp

    from egra.graphs.knn import build_index, graph_stats, search_index

    n, d = case["n"], case["d"]
    x = make_data(n, d, seed=case["seed"])
    rec = {"data_mb": round(x.nbytes / 2**20, 1)}
    rng = np.random.default_rng(case["seed"] + 1)
    queries = rng.choice(n, size=case["tune_queries"] + case["eval_queries"], replace=False)
    tune_q, eval_q = queries[: case["tune_queries"]], queries[case["tune_queries"] :]

    # Exact reference for the sample queries only.
    t = time.perf_counter()
    flat = build_index(x, method="flat", device="cpu")
    exact, _ = search_index(flat, x, K, exclude_self=True, rows=queries)
    del flat
    rec["exact_sample_seconds"] = round(time.perf_counter() - t, 2)
    exact_tune, exact_eval = exact[: len(tune_q)], exact[len(tune_q) :]

    mem = PeakMemory()
    t0, c0 = time.perf_counter(), time.process_time()
    params = case["params"]
    if case["method"] == "faiss_ivf":
        index = build_index(x, method="ivf", device="cpu", **params)
        knob, values = "nprobe", case["sweep"]
        rec["nlist"] = int(index.index.nlist)
    else:
        index = build_index(x, method="hnsw", device="cpu", **params)
        knob, values = "ef_search", case["sweep"]
    rec["build_seconds"] = round(time.perf_counter() - t0, 2)

    sweep = []
    chosen = values[-1]
    for v in values:
        t = time.perf_counter()
        found, _ = search_index(index, x, K, exclude_self=True, rows=tune_q, **{knob: v})
        dt = time.perf_counter() - t
        r = _recall(found, exact_tune)
        sweep.append(
            {knob: v, "recall_at_10_tune": round(r, 4), "ms_per_query": round(1e3 * dt / len(tune_q), 3)}
        )
        print(f"  {case['method']} {knob}={v}: recall@10 {r:.4f} ({1e3 * dt / len(tune_q):.3f} ms/query)")
        if r >= RECALL_TARGET:
            chosen = v
            break
    rec["sweep"] = sweep
    rec[knob] = chosen

    t = time.perf_counter()
    idx, _ = search_index(index, x, K, exclude_self=True, **{knob: chosen})
    rec["query_seconds"] = round(time.perf_counter() - t, 2)
    del index
    t = time.perf_counter()
    rows = np.repeat(np.arange(n, dtype=np.int64), K)
    cols = idx.ravel()
    ok = cols >= 0
    g = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], cols[ok])), shape=(n, n))
    g = g.maximum(g.T).tocsr()  # EGRA S^pt: binary, symmetrised
    rec["graph_seconds"] = round(time.perf_counter() - t, 2)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    rec["cpu_seconds"] = round(time.process_time() - c0, 2)
    rec.update(mem.stop())
    rec["recall_at_10"] = round(_recall(idx[eval_q], exact_eval), 4)
    rec["unfilled_slots"] = int((idx < 0).sum())
    rec["graph"] = graph_stats(g)
    return rec


def child_main(case_json: str) -> None:
    case = json.loads(case_json)
    import faiss

    faiss.omp_set_num_threads(case["threads"])
    rec = run_ann_case(case) if case["method"] in ("faiss_ivf", "faiss_hnsw") else run_exact_case(case)
    print("RESULT " + json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------------------
# Parent side


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def plan(quick: bool, mem_cap_gb: float) -> list[dict]:
    cases: list[dict] = []
    if quick:
        sizes, dims = (2000, 5000), (512, 64)
        ann = {"n": 50_000, "d": 64, "tune": 300, "eval": 500}
        ivf = {"nlist": None, "nprobe": 8}
        hnsw = {"hnsw_m": 16, "ef_construction": 80, "ef_search": 16}
    else:
        sizes, dims = (7_050, 23_033, 63_001), (4096, 64)
        ann = {"n": 1_000_000, "d": 64, "tune": 1000, "eval": 2000}
        ivf = {"nlist": None, "nprobe": 8}
        hnsw = {"hnsw_m": 16, "ef_construction": 64, "ef_search": 16}
    for d in dims:
        for n in sizes:
            for method in ("flat_sym", "faiss_flat", "dense_torch"):
                case = {"kind": "exact", "n": n, "d": d, "method": method}
                if method == "dense_torch":
                    need_gb = 2 * 4 * n * n / 2**30
                    limit = min(mem_cap_gb, 0.8 * _available_gb())
                    if need_gb > limit:
                        case["skipped"] = (
                            f"dense N x N float32 needs ~{need_gb:.1f} GB (sim + top-k workspace, "
                            f"2·4·N² bytes) > cap {limit:.1f} GB"
                        )
                cases.append(case)
    for method, params, sweep in (
        ("faiss_ivf", ivf, [8, 16, 32, 64, 128, 256]),
        ("faiss_hnsw", hnsw, [16, 32, 64, 128, 256, 512]),
    ):
        cases.append(
            {
                "kind": "ann",
                "n": ann["n"],
                "d": ann["d"],
                "method": method,
                "params": params,
                "sweep": sweep,
                "tune_queries": ann["tune"],
                "eval_queries": ann["eval"],
            }
        )
    return cases


def run_case(case: dict, threads: int, timeout: float, graph_dir: str) -> dict:
    rec = {
        "n": case["n"],
        "d": case["d"],
        "method": case["method"],
        "k": K,
        "threads": threads,
        "data": "clustered_gaussian_mixture",
        "convention": "mgcn (self incl., weighted, directed, rowsum_sym)"
        if case["kind"] == "exact"
        else "egra_pt (self excl., binary, symmetrised)",
        "recall_at_10": None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if case.get("skipped"):
        rec["skipped"] = case["skipped"]
        rec["seconds"] = None
        rec["peak_mb"] = None
        return rec
    payload = {**case, "threads": threads, "seed": 0}
    if case["kind"] == "exact":
        payload["graph_out"] = os.path.join(graph_dir, f"{case['n']}_{case['d']}_{case['method']}.npz")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--run-case", json.dumps(payload)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        rec["skipped"] = f"timed out after {timeout:.0f} s"
        rec["seconds"] = None
        rec["peak_mb"] = None
        return rec
    for line in out.stdout.splitlines():
        if line.startswith("  "):
            print(line)
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not result:
        rec["skipped"] = f"failed (exit {out.returncode}): {out.stderr.strip()[-500:]}"
        rec["seconds"] = None
        rec["peak_mb"] = None
        return rec
    rec.update(json.loads(result[-1][len("RESULT ") :]))
    if case["kind"] == "exact":
        rec["graph_file"] = payload["graph_out"]
    return rec


def add_agreement(records: list[dict]) -> None:
    """Compare each exact graph with FAISS flat's for the same (n, d): the fraction of
    rows with the same neighbour set, and the largest edge-weight difference."""
    import numpy as np
    import scipy.sparse as sp

    ref = {(r["n"], r["d"]): r.get("graph_file") for r in records if r["method"] == "faiss_flat"}
    for r in records:
        f = r.pop("graph_file", None)
        base = ref.get((r["n"], r["d"]))
        if f and base and r["method"] != "faiss_flat" and os.path.exists(f) and os.path.exists(base):
            a, b = sp.load_npz(f).tocsr(), sp.load_npz(base).tocsr()
            struct = (a != 0).astype(np.int8) - (b != 0).astype(np.int8)
            struct.eliminate_zeros()
            r["rows_equal_to_faiss_flat"] = round(float((struct.getnnz(axis=1) == 0).mean()), 5)
            diff = abs(a - b)
            r["max_weight_diff_vs_faiss_flat"] = float(diff.max()) if diff.nnz else 0.0


def fmt_table(records: list[dict]) -> str:
    head = (
        f"{'n':>9} {'d':>5} {'method':<12} {'seconds':>8} {'cpu_s':>8} {'peak_mb':>8} {'data_mb':>8} "
        f"{'build_s':>8} {'query_s':>8} {'recall@10':>9} {'load':>5}  note"
    )
    lines = [head, "-" * len(head)]

    def f(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(int(spec.split(".")[0]))

    for r in records:
        note = r.get("skipped", "")
        if not note and "nprobe" in r:
            note = f"nlist={r.get('nlist')} nprobe={r['nprobe']}"
        elif not note and "ef_search" in r:
            note = f"M={r['params_used'].get('hnsw_m')} efC={r['params_used'].get('ef_construction')} "
            note += f"efSearch={r['ef_search']}"
        if "rows_equal_to_faiss_flat" in r:
            note = (
                note + " " if note else ""
            ) + f"same ids as faiss_flat: {r['rows_equal_to_faiss_flat']:.4f}"
        lines.append(
            f"{r['n']:>9} {r['d']:>5} {r['method']:<12} {f(r.get('seconds'), '8.1f')} "
            f"{f(r.get('cpu_seconds'), '8.1f')} {f(r.get('peak_mb'), '8.0f')} {f(r.get('data_mb'), '8.0f')} "
            f"{f(r.get('build_seconds'), '8.1f')} {f(r.get('query_seconds'), '8.1f')} "
            f"{f(r.get('recall_at_10'), '9.4f')} {f(r.get('loadavg_1m'), '5.2f')}  {note}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per case")
    p.add_argument("--mem-cap-gb", type=float, default=12.0, help="skip dense cases needing more")
    p.add_argument("--case-timeout", type=float, default=1200.0, help="seconds per case")
    p.add_argument("--only", default=None, help="comma-separated methods to run (default: all)")
    p.add_argument("--n", default=None, help="comma-separated item counts to run (default: all)")
    p.add_argument("--d", default=None, help="comma-separated dimensions to run (default: all)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="update the records of the cases run in an existing output file, keep the others",
    )
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--run-case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_case:
        child_main(args.run_case)
        return

    out = args.out or (DEFAULT_OUT if not args.quick else DEFAULT_OUT.with_name("knn_graph_quick.json"))
    cases = plan(args.quick, args.mem_cap_gb)
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c["method"] in keep]
    if args.n:
        cases = [c for c in cases if c["n"] in {int(v) for v in args.n.split(",")}]
    if args.d:
        cases = [c for c in cases if c["d"] in {int(v) for v in args.d.split(",")}]
    records = []
    last: dict[tuple[str, int], tuple[int, float]] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as graph_dir:
        for case in cases:
            label = f"{case['method']} n={case['n']} d={case['d']}"
            print(f"[{time.perf_counter() - t_all:7.1f}s] {label} ...", flush=True)
            prev = last.get((case["method"], case["d"]))
            if case["kind"] == "exact" and prev and not case.get("skipped"):
                # Exact builds scale as N²: skip a case that would surely hit the timeout.
                predicted = prev[1] * (case["n"] / prev[0]) ** 2
                if predicted > args.case_timeout:
                    case["skipped"] = (
                        f"predicted {predicted:.0f} s (N² scaling of {prev[1]:.0f} s at n={prev[0]}) "
                        f"> case timeout {args.case_timeout:.0f} s"
                    )
            rec = run_case(case, args.threads, args.case_timeout, graph_dir)
            if rec.get("seconds") is not None:
                last[(case["method"], case["d"])] = (case["n"], rec["seconds"])
            if case["kind"] == "ann":
                rec["params_used"] = case["params"]
            if rec.get("skipped"):
                print(f"    skipped: {rec['skipped']}", flush=True)
            else:
                print(
                    f"    {rec['seconds']:.1f} s, peak +{rec['peak_mb']:.0f} MB"
                    + (
                        f", recall@10 {rec['recall_at_10']:.4f}"
                        if rec.get("recall_at_10") is not None
                        else ""
                    ),
                    flush=True,
                )
            records.append(rec)
        add_agreement(records)
    import faiss
    import numpy as np

    meta = {
        "python": sys.version.split()[0],
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    for r in records:
        r["env"] = meta
    if args.merge and out.exists():
        new_keys = {(r["n"], r["d"], r["method"]) for r in records}
        old = [r for r in json.loads(out.read_text()) if (r["n"], r["d"], r["method"]) not in new_keys]
        order = {key: i for i, key in enumerate((c["n"], c["d"], c["method"]) for c in plan(args.quick, 1e9))}
        records = sorted(old + records, key=lambda r: order.get((r["n"], r["d"], r["method"]), len(order)))
    table = fmt_table(records)
    print()
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    print(f"\nwrote {out} ({len(records)} records, {meta['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
