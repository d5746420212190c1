"""The run fingerprint: a hash of the resolved config, stored in ``metrics.json``.

``skip_if_done`` reuses a finished run only when the config that produced its metrics is the
one asked for now; a directory alone proves nothing (a sweep re-run with a changed grid gives
job N a new config in the same directory). Keys that change where a run writes or how it
reports, never what it computes, are left out of the hash.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from egra.pipeline.cache import artifact_key
from egra.pipeline.checks import ConfigError
from egra.pipeline.io import read_json

log = logging.getLogger(__name__)
HASH_KEY = "config_hash"
CONFIG_FILE = "config_resolved.yaml"
# Dotted keys that do not change a run's numbers.
NOT_HASHED = (
    "paths",
    "hydra",
    "logger",
    "ckpt_path",
    "skip_if_done",
    "verbose",
    "threads",
    "tags",
    "task_name",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
)
RUN_DIR = "<run dir>"


def _strip_run_dir(node: Any, run_dir: str) -> Any:
    # Checkpoint folders etc. name the run directory: a moved sweep is still the same config.
    if isinstance(node, dict):
        return {k: _strip_run_dir(v, run_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_run_dir(v, run_dir) for v in node]
    if isinstance(node, str) and run_dir and node.startswith(run_dir):
        return RUN_DIR + node[len(run_dir) :]
    return node


def hashed_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config as hashed: without ``NOT_HASHED``, the run directory made generic."""
    if isinstance(cfg, DictConfig):
        run_dir = str(OmegaConf.select(cfg, "paths.output_dir", default="") or "")
        tree = OmegaConf.to_container(cfg, resolve=True)
    else:
        tree = dict(cfg)
        run_dir = str((tree.get("paths") or {}).get("output_dir") or "")
    for dotted in NOT_HASHED:
        *parents, last = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return _strip_run_dir(tree, run_dir)


def config_hash(cfg: DictConfig | dict) -> str:
    return artifact_key(config=hashed_config(cfg))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict, limit: int = 3) -> str:
    """``graph.k_pt: 10 -> 3, ...`` for the first ``limit`` differing keys."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    parts = [f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


def finished_run(cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` of ``out_dir`` when it was produced by this config, else None.

    A stale result (another config, or one written before the hash existed) is removed with
    its resume checkpoint, so neither can be mistaken for this config's later; the log says why.
    """
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.exists():
        return None
    try:
        old = read_json(metrics_path)
    except (OSError, ValueError):
        old = {}
    current = config_hash(cfg)
    if isinstance(old, dict) and old.get(HASH_KEY) == current:
        log.info("%s exists for this config (hash %s): skipping finished run", metrics_path, current)
        return old
    why = "it has no config hash"
    if isinstance(old, dict) and old.get(HASH_KEY):
        why = f"its config hash {old[HASH_KEY]} != {current}"
        if (out_dir / CONFIG_FILE).exists():
            prev = hashed_config(OmegaConf.to_container(OmegaConf.load(out_dir / CONFIG_FILE)))
            changes = config_changes(prev, hashed_config(cfg))
            why += f" ({changes})" if changes else ""
    log.warning("re-running %s: the finished run there is for another config: %s", out_dir, why)
    metrics_path.unlink(missing_ok=True)  # under DDP every rank gets here
    (out_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    return None


# What a checkpoint's weights and sampler state depend on: a resume must not change them.
RESUME_KEYS = ("model", "data", "seed", "graph", "callbacks.alignment_schedule")
RESUME_FREE = ("data.eval_batch_size", "graph.device", "graph.chunk_size")  # how, not what


def _resume_part(tree: dict) -> dict:
    part = {}
    for dotted in RESUME_KEYS:
        node: Any = tree
        for p in dotted.split("."):
            node = node.get(p) if isinstance(node, dict) else None
        part[dotted] = copy.deepcopy(node)
    for dotted in RESUME_FREE:
        head, last = dotted.split(".")
        if isinstance(part.get(head), dict):
            part[head].pop(last, None)
    return part


def check_resume(cfg: DictConfig, out_dir: Path) -> None:
    """``ckpt_path=last`` continues the run in ``out_dir`` only with its model, data and seed.

    Raises :class:`ConfigError` before any stage when the config the run started with
    (``config_resolved.yaml``, written at its start by :func:`record_config`) differs there.
    """
    if cfg.get("ckpt_path") != "last" or not (out_dir / "checkpoints" / "last.ckpt").is_file():
        return
    prev_path = out_dir / CONFIG_FILE
    if not prev_path.is_file():
        return
    before = _resume_part(hashed_config(OmegaConf.to_container(OmegaConf.load(prev_path))))
    now = _resume_part(hashed_config(cfg))
    if before != now:
        raise ConfigError(
            f"ckpt_path=last: {out_dir / 'checkpoints' / 'last.ckpt'} belongs to another run "
            f"({config_changes(before, now)}); resume with the same model, graphs, λ schedule, data and seed, "
            "or start a new run directory"
        )


def record_config(cfg: DictConfig, out_dir: Path) -> None:
    """Write ``config_resolved.yaml`` when a run starts (a resume compares against it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / CONFIG_FILE, resolve=True)
