"""Which process of a multi-process job this is, and how the processes wait for each other.

Under Lightning's DDP launcher (``trainer=ddp``) every rank re-runs the whole command, so
every stage runs once per rank. Before the first ``trainer.fit`` there is no process
group: the launcher starts ranks 1.. from inside rank 0's first fit, and under ``srun`` all
ranks start together. The rank is then read from the launcher's environment; once a fit
has set up the process group, from ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as torch_dist


def initialized() -> bool:
    """A process group with more than one rank exists (set up by a Lightning DDP fit)."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def rank() -> int:
    """Global rank: from the process group, else torchrun's ``RANK``, SLURM's
    ``SLURM_PROCID`` (one task per GPU), or Lightning's ``NODE_RANK``/``LOCAL_RANK``."""
    if initialized():
        return torch_dist.get_rank()
    found = _env_int("RANK")
    if found is not None:
        return found
    if (_env_int("SLURM_NTASKS") or 1) > 1:
        return _env_int("SLURM_PROCID") or 0
    local, node = _env_int("LOCAL_RANK") or 0, _env_int("NODE_RANK") or 0
    # Before the process group only "is this rank 0" matters: any rank of a node > 0 is not.
    return local if node == 0 else node * max(1, _env_int("LOCAL_WORLD_SIZE") or 1) + local


def local_rank() -> int:
    """Rank within the node (its GPU number under one-process-per-GPU launchers)."""
    found = _env_int("LOCAL_RANK")
    if found is not None:
        return found
    if (_env_int("SLURM_NTASKS") or 1) > 1:
        return _env_int("SLURM_LOCALID") or 0
    return 0


def barrier() -> None:
    """Wait for every rank of the process group (a no-op without one)."""
    if initialized():
        torch_dist.barrier()


def check_same(value: Any, what: str) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (a no-op without a group)."""
    if not initialized():
        return
    values: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(
            f"ranks disagree on {what}: {values} (same config and data on every rank are required)"
        )


def _n_devices(devices: Any) -> int:
    if isinstance(devices, int):
        return torch.cuda.device_count() if devices == -1 else devices
    if isinstance(devices, str):
        if devices.strip() in ("auto", "-1"):
            return max(1, torch.cuda.device_count())
        return len(devices.split(",")) if "," in devices else int(devices)
    return len(list(devices))


def reruns_per_rank(trainer: Mapping[str, Any]) -> bool:
    """Whether a fit with this trainer config runs in several processes that each run the
    whole command (Lightning's ``ddp`` launcher, ``srun``, torchrun) — as opposed to one
    process (``ddp_spawn`` runs the fit in children and returns to the caller)."""
    if initialized() or (_env_int("WORLD_SIZE") or 1) > 1 or (_env_int("SLURM_NTASKS") or 1) > 1:
        return True
    # Lightning starts the ranks of ddp, fsdp, deepspeed and "auto" on several devices by
    # re-running the command; spawn/fork strategies run the fit in children of this process.
    strategy = trainer.get("strategy") or "auto"
    if isinstance(strategy, Mapping):  # a strategy object from config, e.g. DDPStrategy
        name, method = str(strategy.get("_target_", "")).lower(), str(strategy.get("start_method", "popen"))
    else:
        name, method = str(strategy).lower(), "popen"
    if method != "popen" or "spawn" in name or "fork" in name or "single" in name or name == "dp":
        return False
    nodes = int(trainer.get("num_nodes") or 1)
    return _n_devices(trainer.get("devices", 1)) * nodes > 1
