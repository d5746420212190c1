"""Child process of the artifact-race tests (spawned: must be importable, no pytest fixtures)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np


def race(rank: int, world: int, root: str, mode: str, port: int, result_dir: str, start_at: float) -> None:
    """Both processes ask for artifact ``k`` at once; every ``build`` call and every write is
    appended to a log file, the artifact each one got goes to ``<result_dir>/<rank>.json``.

    ``mode``: ``lock`` (no process group, the file lock decides), ``group`` (gloo group:
    rank 0 builds, the other waits at the barrier), ``collective`` (both build, rank 0
    writes), ``unshared`` (as ``group`` but rank 1 looks in another directory).
    """
    import torch.distributed as torch_dist

    from egra.pipeline import cache as cache_mod

    log = Path(result_dir) / "events.log"
    if mode != "lock":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    if mode == "unshared" and rank == 1:
        root = root + "-rank1"
    cache = cache_mod.ArtifactCache(root)
    real_put = cache.put

    def put(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"put {rank}\n")
        return real_put(*args, **kwargs)

    cache.put = put
    time.sleep(max(0.0, start_at - time.time()))  # both ask at the same moment

    def build():
        with open(log, "a") as f:
            f.write(f"build {rank}\n")
        time.sleep(1.0)  # long enough for the other process to arrive meanwhile
        return {"x": np.arange(10, dtype=np.float32)}, {"by": rank}

    out = {"rank": rank}
    try:
        art = cache.get_or_build("emb", "k", build, collective=mode == "collective")
        out.update(path=str(art.path), x=art.array("x").tolist(), by=art.manifest["by"])
    except cache_mod.NotSharedError as err:
        out["error"] = str(err)
    (Path(result_dir) / f"{rank}.json").write_text(json.dumps(out))
    if mode != "lock":
        torch_dist.destroy_process_group()
