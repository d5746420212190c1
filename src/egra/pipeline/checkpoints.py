"""Checkpoints that survive a full disk or a kill, and a resume that survives a damaged one.

* :class:`AtomicCheckpointIO` writes every checkpoint into a temporary file in the
  checkpoint's own directory and renames it into place (``egra.pipeline.io.atomic_write``).
  Lightning's own writer stages the file in the system's temporary directory and copies it
  across filesystems, so a disk that fills during the copy leaves a truncated ``last.ckpt``.
  :func:`checkpoint_plugins` puts it under the trainer's configured plugins (inside
  ``AsyncCheckpointIO`` when that is configured).
* :func:`newest_intact` picks the checkpoint a resume starts from: ``last.ckpt`` when it is
  intact, else the newest intact one beside it (``best.ckpt``). Intact means every member
  of the checkpoint's zip archive matches its CRC-32 and the checkpoint names its epoch.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from egra.pipeline.io import atomic_write

LAST, BEST = "last.ckpt", "best.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written atomically in their own directory."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's way
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))


def checkpoint_plugins(configured: Iterable[Any] | None) -> list[Any]:
    """The trainer's ``plugins`` (configs or objects) with checkpoints written atomically.

    A configured ``AsyncCheckpointIO`` (the default trainer's) keeps saving in its thread,
    through an :class:`AtomicCheckpointIO`; without any checkpoint plugin one is added; a
    checkpoint plugin of the user's own is kept as it is.
    """
    plugins = [instantiate(p) if not isinstance(p, CheckpointIO) else p for p in (configured or [])]
    ios = [p for p in plugins if isinstance(p, CheckpointIO)]
    if not ios:
        plugins.append(AtomicCheckpointIO())
    for p in ios:
        if isinstance(p, _WrappingCheckpointIO) and p.checkpoint_io is None:
            p.checkpoint_io = AtomicCheckpointIO()
    return plugins


def damage(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from (one line), or None when intact."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC-32
        if bad is not None:
            return f"member {bad} fails its CRC check"
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(ckpt, dict) or "epoch" not in ckpt or "state_dict" not in ckpt:
            return "not a Lightning checkpoint (no epoch or state_dict)"
    except FileNotFoundError:
        return "missing"
    except Exception as err:  # truncated (no zip directory), unreadable, not a checkpoint
        text = " ".join(str(err).split()) or type(err).__name__
        return f"{type(err).__name__}: {text[:120]}"
    return None


def _progress(path: Path) -> tuple[int, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", -1))


def newest_intact(ckpt_dir: str | Path) -> tuple[Path | None, str | None]:
    """(checkpoint to resume from, why ``last.ckpt`` was passed over) in ``ckpt_dir``.

    ``last.ckpt`` when it is intact (no note); else the intact checkpoint of the latest
    training step among the others (``best.ckpt``), with the reason ``last.ckpt`` was
    skipped; (None, note) when none is intact; (None, None) when there is none at all.
    """
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / LAST
    why = damage(last) if last.exists() else None
    if last.exists() and why is None:
        return last, None
    others = sorted(p for p in ckpt_dir.glob("*.ckpt") if p.name != LAST) if ckpt_dir.is_dir() else []
    intact = [p for p in others if damage(p) is None]
    if not intact:
        if why is None and not others:
            return None, None
        return (
            None,
            f"{last} is {'damaged (' + why + ')' if why else 'missing'} and no other checkpoint is intact",
        )
    best = max(intact, key=_progress)
    note = f"{last} is damaged ({why})" if why else f"{last} is missing"
    return best, note


def remove_partial_writes(ckpt_dir: str | Path) -> None:
    """Temporary files a killed checkpoint write left (a full disk has no room for them)."""
    for tmp in Path(ckpt_dir).glob(".*.ckpt.*.tmp"):
        tmp.unlink(missing_ok=True)
