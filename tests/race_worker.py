"""Child process of the artifact-race test (spawned: must be importable, no pytest fixtures)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

#: In this order: ``lock`` needs no process group, the others share one.
MODES = ("lock", "group", "collective", "unshared")


def race(rank: int, world: int, root: str, port: int, result_dir: str, start_at: float) -> None:
    """For each mode the two processes ask for one artifact at once; every ``build`` call and
    every write is appended to ``<result_dir>/<mode>/events.log``, the artifact each got
    goes to ``<result_dir>/<mode>/<rank>.json``.

    ``lock``: no process group, the file lock decides. ``group``: gloo group, rank 0 builds
    while the other waits at the barrier. ``collective``: both build (as ranks of one DDP
    fit), rank 0 writes. ``unshared``: as ``group``, but rank 1 looks in another directory.
    """
    import torch.distributed as torch_dist

    from egra.pipeline import cache as cache_mod

    time.sleep(max(0.0, start_at - time.time()))  # both ask at the same moment
    for mode in MODES:
        if mode == "group":
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            torch_dist.init_process_group("gloo", rank=rank, world_size=world)
        out_dir = Path(result_dir) / mode
        out_dir.mkdir(parents=True, exist_ok=True)
        mode_root = f"{root}/{mode}" + ("-rank1" if mode == "unshared" and rank == 1 else "")
        cache = cache_mod.ArtifactCache(mode_root)
        log = out_dir / "events.log"
        real_put = cache.put

        def put(*args, _log=log, _put=real_put, **kwargs):
            with open(_log, "a") as f:
                f.write(f"put {rank}\n")
            return _put(*args, **kwargs)

        def build(_log=log):
            with open(_log, "a") as f:
                f.write(f"build {rank}\n")
            time.sleep(1.0)  # long enough for the other process to arrive meanwhile
            return {"x": np.arange(10, dtype=np.float32)}, {"by": rank}

        cache.put = put
        out = {"rank": rank}
        try:
            art = cache.get_or_build("emb", "k", build, collective=mode == "collective")
            out.update(path=str(art.path), x=art.array("x").tolist(), by=art.manifest["by"])
        except cache_mod.NotSharedError as err:
            out["error"] = str(err)
        (out_dir / f"{rank}.json").write_text(json.dumps(out))
    torch_dist.destroy_process_group()
