"""The study layer's launcher stops a job's whole process group: on its timeout, on Ctrl-C and
on SIGTERM to the study, parallel workers included (a joblib worker may ignore SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egra.experiments.launch import _sigterm_raises, kill_group

# A leader that starts a worker ignoring SIGTERM, then sleeps; the worker writes its pid.
LEADER = """
import subprocess, sys, time
worker = "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
worker += "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
subprocess.Popen([sys.executable, "-c", worker, sys.argv[1]])
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie waits for a parent to reap it: it runs no more


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_kill_group_stops_a_worker_that_ignores_sigterm(tmp_path):
    pid_file = tmp_path / "worker.pid"
    proc = subprocess.Popen([sys.executable, "-c", LEADER, str(pid_file)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    assert _running(worker)
    assert kill_group(proc.pid, grace=1.0, leader=proc)
    time.sleep(0.5)
    assert proc.poll() is not None
    assert not _running(worker), "the worker outlived its group's kill"


def test_sigterm_to_the_study_raises_so_its_jobs_are_stopped():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, _sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the launch
