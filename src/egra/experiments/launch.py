"""Launch: the one way a study runs ``egra-train`` — a single run or a Hydra multirun.

Every study (compare, reproduce, the bench scripts) calls :func:`train`. By default the job runs
in a ``python -m egra.train`` subprocess of its own process group, its output appended to a log
file; a timeout kills the whole group (no orphaned grandchildren). With ``task_function``
(egra-train's, handed in by an entry point) the same Hydra run or multirun happens in this
process instead, which spares the interpreter and Lightning start of each launch (tests, smoke
budgets). Parallel jobs and clusters are Hydra's business: pass ``hydra/launcher=joblib`` or
``hydra/launcher=slurm`` among the overrides.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

TaskFunction = Callable[[DictConfig], Any]
TIMEOUT_STATUS = 124  # what coreutils' `timeout` returns: the job ran past its limit


def train(
    overrides: Sequence[str],
    log_file: str | Path,
    *,
    multirun: bool = False,
    task_function: TaskFunction | None = None,
    conf_dir: str | Path | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    own_group: bool = True,
) -> int:
    """Run ``egra-train <overrides>`` (``-m`` with ``multirun``); returns its exit status.

    A multirun in which a job failed returns 4 (the other jobs ran, the failed ones left
    ``error.txt``); a subprocess killed at ``timeout`` seconds returns 124. In this process
    (``task_function``), Hydra must be initialised already or ``conf_dir`` name the conf/ tree.
    ``own_group=False`` keeps the subprocess in the caller's process group, for a caller that
    is itself a group killed as a whole (bench/gpu_check's sections).
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if task_function is not None:
        return _in_process(list(overrides), log_file, multirun, task_function, conf_dir)
    cmd = [sys.executable, "-m", "egra.train", *(["-m"] if multirun else []), *overrides]
    with open(log_file, "a") as fh, _sigterm_raises():
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=own_group, env=_env(env)
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, leader=proc) if own_group else proc.kill()
            fh.write(f"\nkilled after {timeout:.0f}s (egra.experiments.launch timeout)\n")
            return TIMEOUT_STATUS
        except BaseException:  # Ctrl-C in the study: its jobs stop too
            kill_group(proc.pid, leader=proc) if own_group else proc.kill()
            raise


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM to the study (``kill``, a scheduler ending it) raises SystemExit here, so the
    job's whole process group is stopped as on Ctrl-C; by default Python would die at once and
    leave the job and its parallel workers (Hydra's joblib launcher) training unseen."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _env(extra: dict[str, str] | None) -> dict[str, str] | None:
    return None if extra is None else {**os.environ, **extra}


def kill_group(pgid: int, grace: float = 10.0, leader: subprocess.Popen | None = None) -> bool:
    """SIGTERM the whole process group ``pgid`` (a child started with ``start_new_session``),
    SIGKILL what of it still runs after ``grace`` seconds; True once nothing of it runs. The
    whole group, not only its leader: workers of a parallel launcher may outlive their parent.
    ``leader`` (the group's ``Popen``) is reaped on the way, so its exit counts at once."""

    def alive() -> bool:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not alive():
                return True
            time.sleep(0.05)
    return not alive()


def _in_process(
    overrides: list[str],
    log_file: Path,
    multirun: bool,
    task_function: TaskFunction,
    conf_dir: str | Path | None,
) -> int:
    """Hydra's run or multirun in this process (inside an initialised Hydra, or one made here on
    ``conf_dir``); stdout, stderr and log records go to ``log_file``."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if not GlobalHydra.instance().is_initialized():
        if conf_dir is None:
            raise ValueError("launch.train in this process: initialise Hydra or pass conf_dir")
        ctx = initialize_config_dir(
            config_dir=str(Path(conf_dir).resolve()), version_base="1.3", job_name="train"
        )
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    status = 0
    with ctx, open(log_file, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        hydra = GlobalHydra.instance().hydra
        try:
            if multirun:
                # What `-m` sets on the command line: egra-train then records a failed job
                # (error.txt) and goes on instead of raising.
                hydra.multirun(
                    config_name="train",
                    task_function=task_function,
                    overrides=[*overrides, "hydra.mode=MULTIRUN"],
                    with_log_configuration=False,
                )
            else:
                hydra.run(
                    config_name="train",
                    task_function=task_function,
                    overrides=overrides,
                    with_log_configuration=False,
                )
        except SystemExit as e:  # egra-train's statuses: 2/3 user errors, 4 a failed sweep job
            status = e.code if isinstance(e.code, int) else 1
        except Exception:  # a run Hydra could not start, or a single run that raised
            traceback.print_exc(file=fh)
            status = 1
        finally:
            HydraConfig.instance().cfg = None
            # Hydra's job logging points the root logger at this job's files: restore ours.
            for h in list(root.handlers):
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            for h in handlers:
                if h not in root.handlers:
                    root.addHandler(h)
            root.setLevel(level)
    return status
