"""bench/train_throughput.py: its ratios are against floors of the same run, never outside timings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"
_spec = importlib.util.spec_from_file_location("train_throughput", _path)
tt = importlib.util.module_from_spec(_spec)
sys.modules["train_throughput"] = tt
_spec.loader.exec_module(tt)


def _record(model: str, run: str, epoch: float, plain: float, floor: float | None = None) -> dict:
    """A case whose CPU times are the arguments and whose wall times are twice those (a busy machine)."""
    r = {
        "model": model,
        "threads": 1,
        "preset": "baby",
        "sgemm_2048_gflops": 50.0,
        "epoch_cpu_s_median": epoch,
        "epoch_s_median": 2 * epoch,
        "plain_epoch_cpu_s": plain,
        "plain_epoch_s": 3 * plain,
        "eval_cpu_s": 1.0,
        "eval_s": 2.0,
        "eval_floor_s": 0.25,
        "graph_build_s": 0.1,
        "peak_mb": 900.0,
        "load_1m_start": 0.5,
        "meta": {"measured_at": run, "command": "python bench/train_throughput.py --threads 1"},
    }
    if floor is not None:
        r["floor"] = {"floor_epoch_cpu_s": floor, "floor_epoch_s": 5 * floor}
    return r


def test_ratios_use_same_run_floors_only():
    """CPU time over CPU time of the same run; a busy machine's wall times do not enter."""
    recs = [
        _record("lightgcn", "run1", 2.0, 1.6),
        _record("mgcn", "run1", 30.0, 28.0, floor=20.0),
        _record("egra", "run1", 33.0, 30.0, floor=20.0),
        _record("egra", "run2", 40.0, 30.0, floor=20.0),  # merged from another run: no MGCN ratio
    ]
    tt.add_ratios(recs)
    assert recs[0]["epoch_vs_plain"] == 1.25 and recs[0]["eval_vs_floor"] == 4.0
    assert "epoch_vs_floor" not in recs[0]
    assert recs[1]["epoch_vs_floor"] == 1.5
    assert recs[2]["epoch_vs_mgcn"] == 1.1 and recs[2]["epoch_vs_mgcn_wall"] == 1.1
    assert "epoch_vs_mgcn" not in recs[3]
    assert not hasattr(tt, "REFERENCE")  # no timings measured elsewhere
    assert "reference" not in json.dumps(recs)


def test_markdown_records_command_and_sgemm_rate():
    recs = [_record("lightgcn", "run1", 2.0, 1.6), _record("mgcn", "run1", 30.0, 28.0, floor=20.0)]
    for r in recs:
        r["meta"].update(cpu="cpu", cores=2, commit="0" * 40, dirty=False)
    tt.add_ratios(recs)
    md = tt.markdown(recs)
    assert "Command: `python bench/train_throughput.py --threads 1`" in md
    assert "| MGCN | 1 | 50.0 | 30.00 | 28.00 | 1.07× | 20.00 | 1.50× | 1.00 | 0.250 | 4.0× | 60.00 |" in md
