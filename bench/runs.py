"""One `egra-train` run per directory for the bench scripts: skipped when its metrics.json exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def train_run(run_dir: Path, *overrides: str, check: bool = True) -> Path:
    """``python -m egra.train <overrides> hydra.run.dir=<run_dir>`` at 1 thread with the CSV
    logger and no progress bar, unless ``run_dir/metrics.json`` exists; returns ``run_dir``."""
    if not (run_dir / "metrics.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "egra.train",
            *overrides,
            "threads=1",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ]
        subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL)
    return run_dir
