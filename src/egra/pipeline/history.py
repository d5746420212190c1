"""What a resumed run keeps of the attempt it continues.

Lightning's CSV logger deletes ``metrics.csv`` when it starts, so a resumed run would keep only
the epochs after the kill. ``keep_csv_history`` puts back the rows of the epochs the checkpoint
holds (rows of the epoch that was interrupted are dropped: it runs again). ``resumable``
tells the pretrain stage whether a backbone's work directory holds a checkpoint to continue.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from egra.pipeline.checkpoints import newest_intact

log = logging.getLogger(__name__)


def checkpoint_epoch(ckpt_path: str | Path) -> int | None:
    """The epoch a Lightning checkpoint was saved in, or None when it cannot be read."""
    try:
        return int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["epoch"])
    except Exception as err:  # truncated file, not a checkpoint: the caller starts fresh
        log.warning("checkpoint %s is unreadable (%s)", ckpt_path, type(err).__name__)
        return None


def resumable(work_dir: Path) -> Path | None:
    """The intact checkpoint under ``<work_dir>/checkpoints`` a resume would start from
    (``last.ckpt``, else the newest intact other one), or None."""
    return newest_intact(Path(work_dir) / "checkpoints")[0]


def keep_csv_history(loggers: list, ckpt_path: str | None) -> None:
    """Before a resumed fit: keep the CSV rows up to the checkpoint's epoch in ``metrics.csv``."""
    if ckpt_path is None or rank_zero_only.rank != 0:
        return
    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv_loggers:
        return
    epoch = checkpoint_epoch(ckpt_path)
    if epoch is None:
        return
    for lg in csv_loggers:
        path = Path(lg.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("epoch") and float(r["epoch"]) <= epoch]
        with warnings.catch_warnings():
            # "... will be deleted": true, and undone right below.
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = lg.experiment  # creating the writer deletes metrics.csv: write the kept rows back
        with open(path, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = header  # later rows append; a new column rewrites the header
        log.info("resumed %s: kept %d rows of epochs 0-%d", path, len(rows), epoch)
