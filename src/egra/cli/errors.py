"""User errors as one line and a distinct exit status; internal errors keep their traceback.

A user error is something the user fixes in the command line, the config or the data folder:
:class:`egra.pipeline.checks.ConfigError` and :class:`egra.data.DataError`. The traceback is
still available with ``HYDRA_FULL_ERROR=1`` or ``verbose=true``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from egra.data import DataError
from egra.pipeline.checks import ConfigError

# Exit statuses of egra-train / egra-pretrain (1 stays an internal error or a Hydra usage error).
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_FAILED_JOBS = 4  # a multirun in which at least one job failed (the others ran)
ERROR_FILE = "error.txt"  # what a failed multirun job leaves in its directory


def exit_code(exc: BaseException) -> int | None:
    """The exit status of a user error, or None for an internal one."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, DataError):
        return EXIT_DATA
    return None


def one_line(exc: BaseException) -> str:
    kind = "bad setting" if isinstance(exc, ConfigError) else "bad data"
    return f"{kind}: " + " ".join(str(exc).split())


def wants_traceback(cfg: Any) -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(cfg is not None and cfg.get("verbose", False))


def exit_if_user_error(prog: str, exc: BaseException, cfg: Any) -> None:
    """Print a user error as one line on stderr and exit with its status; return otherwise."""
    code = exit_code(exc)
    if code is None or wants_traceback(cfg):
        return
    print(f"{prog}: {one_line(exc)}", file=sys.stderr, flush=True)
    sys.exit(code)


class SweepStatus(Callback):
    """Ends a multirun with status ``EXIT_FAILED_JOBS`` when a job of it failed.

    A failed job leaves ``error.txt`` in its directory and a finished one removes it
    (``egra.cli.train``), so the sweep directory tells, whatever the launcher ran the jobs on.
    """

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # Only this launch's failures: a job dir a changed grid no longer runs keeps its old file.
        failed = sorted(
            (
                p.parent.name
                for p in sweep_dir.glob(f"*/{ERROR_FILE}")
                if p.stat().st_mtime >= self.started - 1
            ),
            key=lambda n: (len(n), n),
        )
        if failed:
            print(
                f"egra-train: {len(failed)} job(s) failed: {', '.join(failed)} "
                f"(see {sweep_dir}/<job>/{ERROR_FILE}); the others finished",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(EXIT_FAILED_JOBS)
