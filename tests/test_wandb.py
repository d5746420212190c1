"""``logger=wandb`` offline, with no network: one W&B run in the run directory holding the
resolved config, the per-epoch history (``align/lambda`` included) and the final metrics.

W&B 0.31 writes an offline run as ``run-<id>.wandb`` only (no ``files/config.yaml`` or
``files/wandb-summary.json``), a LevelDB-style log of protobuf ``Record`` messages, read here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from egra.cli import finish_wandb
from egra.pipeline.train import run
from egra.training.callbacks import lambda_at

_BLOCK = 32768  # log block size; a record never straddles a block's last 6 bytes
_HEADER = 7  # file header (":W&B", magic, version) and record header (crc, length, type)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: str | Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of an offline ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # zero padding at the end of a block
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (_FULL, _FIRST):
            pending = chunk
        elif kind in (_MIDDLE, _LAST):
            pending += chunk
        else:
            continue
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


@dataclass
class OfflineRun:
    """What an offline run recorded: its header, config, history rows, summary and exit code."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def series(self, key: str) -> list[Any]:
        return [row[key] for row in self.history if key in row]


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``<save_dir>/wandb/offline-run-*/run-*.wandb``."""
    (log_file,) = Path(run_dir).glob("run-*.wandb")
    out = OfflineRun()
    for rec in wandb_records(log_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.run_id, out.project, out.group, out.job_type = r.run_id, r.project, r.run_group, r.job_type
            out.tags = list(r.tags)
            out.config.update(_items(r.config.update))
        elif kind == "config":
            out.config.update(_items(rec.config.update))
        elif kind == "history":
            out.history.append(_items(rec.history.item))
        elif kind == "summary":
            out.summary.update(_items(rec.summary.update))
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    return out


def offline_runs(save_dir: str | Path) -> list[Path]:
    return sorted((Path(save_dir) / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_offline_wandb_run_records_config_history_and_final_metrics(cfg_factory, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no API key needed
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = cfg_factory(["model=egra", "backbones.mgcn.max_epochs=2", "trainer.max_epochs=2", "logger=wandb"])
    try:
        metrics = run(cfg)
    finally:
        finish_wandb()
        # finish() may return before W&B's service process has written the run's log:
        # teardown stops the service, which flushes it.
        import wandb

        wandb.teardown()

    runs = offline_runs(cfg.paths.output_dir)
    assert len(runs) == 1, runs  # under the run directory; the pretrain stage logs nothing
    rec = read_offline_run(runs[0])
    assert rec.project == "egra"
    assert rec.group == cfg.task_name == "train" and rec.job_type == "train"
    assert rec.tags == list(cfg.tags)
    assert rec.exit_code == 0

    # The resolved config.
    assert rec.config["model"]["_target_"] == "egra.models.EGRA"
    sched = cfg.callbacks.alignment_schedule
    assert rec.config["callbacks"]["alignment_schedule"]["lambda_max"] == sched.lambda_max
    assert rec.config["seed"] == cfg.seed and rec.config["trainer"]["max_epochs"] == 2

    # Per-epoch history: λ(t) of the schedule, the loss terms, validation each epoch.
    expected = [lambda_at(e, sched.lambda_min, sched.lambda_max, sched.P, sched.ramp) for e in range(2)]
    assert rec.series("align/lambda") == pytest.approx(expected, rel=1e-6)
    assert len(rec.series("train/loss_align")) == 2
    assert len(rec.series("valid/Recall@20")) >= 2

    # The final row and the summary hold every number of metrics.json.
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    assert {"best_epoch", "epochs_run", "wall_time_s", "pretrain_reused", "test/Recall@20"} <= set(numbers)
    final = rec.history[-1]
    for key, value in numbers.items():
        assert final[key] == pytest.approx(float(value), rel=1e-9), key
        assert rec.summary[key] == pytest.approx(float(value), rel=1e-9), key
