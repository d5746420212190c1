"""CPU seconds from ``egra-train <bad setting>`` to its one line, for every bad setting of
tests/test_bad_settings.py, through the real command line (a fresh interpreter each time).

Per setting: CPU seconds of the child process (user + system, ``getrusage(RUSAGE_CHILDREN)``),
wall seconds, exit status and the line on stderr. On a shared machine other processes only
add to a process's CPU time (caches, memory bandwidth), so a setting whose first run took
``RERUN_ABOVE_S`` or more runs twice more and its figure is the least of its samples (all are
recorded). Settings answered from the config alone
(no dataset needed) must take under 1.5 CPU seconds: they are checked before torch is
imported. The few that need the dataset's size are answered after the load stage (torch is
imported by then) and are reported apart. Writes bench/results/bad_settings.json.

    python bench/bad_settings.py [--limit N] [--out bench/results/bad_settings.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_bad_settings import BAD_SETTINGS, DATA  # noqa: E402

BUDGET_CPU_S = 1.5
RERUN_ABOVE_S = 1.2


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(overrides: list[str], root: Path, n: int) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    tiny = [] if any(o.startswith("data=") for o in overrides) else ["data.preset=tiny"]
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        *tiny,
        "threads=1",  # before the setting's own overrides, which win (threads=0 is one)
        *overrides,
        f"paths.root_dir={root}",
        f"hydra.run.dir={root / 'runs' / str(n)}",
    ]
    cpu0, t0 = _child_cpu(), time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = out.stderr.strip().splitlines()
    return {
        "overrides": overrides,
        "cpu_s": round(_child_cpu() - cpu0, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
        "exit": out.returncode,
        "stderr_lines": len(lines),
        "line": lines[-1] if lines else "",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="only the first N settings")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bad_settings.json")
    args = p.parse_args()
    cases = BAD_SETTINGS[: args.limit]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n, case in enumerate(cases):
            needs_data = len(case) > 2 and case[2] == DATA
            row = measure(case[0], root, n)
            samples = [row["cpu_s"]]
            if not needs_data and row["cpu_s"] >= RERUN_ABOVE_S:
                samples += [measure(case[0], root, n)["cpu_s"] for _ in range(2)]
            row.update({"cpu_s": min(samples), "cpu_s_samples": samples, "needs_data": needs_data})
            rows.append(row)
            print(f"{row['cpu_s']:6.2f} s  exit {row['exit']}  {' '.join(case[0])}  {samples}", flush=True)
    config_only = [r for r in rows if not r["needs_data"]]
    cpu = [r["cpu_s"] for r in config_only]
    summary = {
        "settings": len(rows),
        "config_only": len(config_only),
        "config_only_cpu_s": {"max": max(cpu), "median": statistics.median(cpu), "min": min(cpu)},
        "config_only_over_budget": [
            " ".join(r["overrides"]) for r in config_only if r["cpu_s"] >= BUDGET_CPU_S
        ],
        "needs_data_cpu_s": {
            "max": max((r["cpu_s"] for r in rows if r["needs_data"]), default=None),
            "median": statistics.median([r["cpu_s"] for r in rows if r["needs_data"]] or [0]),
        },
        "all_exit_2_one_line": all(r["exit"] == 2 and r["stderr_lines"] == 1 for r in rows),
    }
    result = {
        "command": "python bench/bad_settings.py" + (f" --limit {args.limit}" if args.limit else ""),
        "budget_cpu_s": BUDGET_CPU_S,
        "rerun_above_s": RERUN_ABOVE_S,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    print(f"wrote {args.out}")
    return 0 if not summary["config_only_over_budget"] and summary["all_exit_2_one_line"] else 1


if __name__ == "__main__":
    sys.exit(main())
