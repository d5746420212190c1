"""What ``egra-train`` prints: each fact once, a tiny run in at most 25 lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egra.cli.console import OnceFilter, quiet_console

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 25


@pytest.mark.slow
def test_tiny_run_prints_each_fact_once_in_at_most_25_lines(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        "experiment=egra_tiny",
        "threads=1",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (out.stdout + out.stderr).splitlines()
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    text = "\n".join(lines)
    for fact in ("Seed set to 999", "GPU available", "`Trainer.fit` stopped"):
        assert text.count(fact) <= 1, fact
    for noise in ("TPU available", "Restoring states", "Loaded model weights", "Validation", "Testing"):
        assert noise not in text, noise
    assert "EGRA on synthetic-tiny-s0" in text and "EGRA vs backbone" in text
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_each_message_once_per_job():
    log = logging.getLogger("egra.test_console")
    root = logging.getLogger()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    root.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        quiet_console()
        for _ in range(3):
            log.info("Seed set to %d", 999)
        log.info("Seed set to %d", 1)  # another fact
        quiet_console()  # the next job of a multirun starts afresh
        log.info("Seed set to %d", 999)
    finally:
        root.removeHandler(handler)
        log.setLevel(level)
    assert records == ["Seed set to 999", "Seed set to 1", "Seed set to 999"]
    assert sum(isinstance(f, OnceFilter) for f in handler.filters) == 1
