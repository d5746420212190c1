"""EGRA learns, and a too-large alignment weight never collapses silently.

On the generated `small` preset (sparse and noisy like Amazon data, MostPop Recall@20 ≈ 0.045),
with S^pt from the raw features so no backbone has to be trained first.
"""

from __future__ import annotations

import pytest

from egra.data.interactions import TEST, TRAIN
from egra.data.synthetic import generate
from egra.metrics.popularity import mostpop_metrics
from egra.pipeline.train import run

SMALL = [
    "model=egra",
    "data.preset=small",
    "graph.graph_source=raw_features",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def mostpop_small() -> float:
    d = generate("small", 0)
    return mostpop_metrics(*d.pairs(TRAIN), *d.pairs(TEST), d.n_items)["Recall@20"]


@pytest.mark.slow
def test_short_run_beats_mostpop_clearly(cfg_factory, mostpop_small):
    metrics = run(cfg_factory([*SMALL, "trainer.max_epochs=12"]))
    assert metrics["status"] == "ok"
    assert metrics["test/Recall@20"] > 1.8 * mostpop_small, (metrics["test/Recall@20"], mostpop_small)


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["raw", "default"])
def test_large_lambda_trains_or_trips_the_guard(cfg_factory, mostpop_small, scale):
    """λ_max = 1 (raw: certain collapse; default scale: whatever it gives) is never a silent
    collapse: the run either learns or stops with status "collapsed" and the reason."""
    extra = ["model.align_scale=raw"] if scale == "raw" else []
    cfg = cfg_factory(
        [
            *SMALL,
            *extra,
            "callbacks.alignment_schedule.lambda_max=1.0",
            "callbacks.alignment_schedule.P=2",
            "trainer.max_epochs=15",
            "callbacks.collapse_guard.min_steps=30",
        ],
        sub=scale,
    )
    metrics = run(cfg)
    healthy = metrics["test/Recall@20"] > 1.8 * mostpop_small
    if scale == "raw":
        assert metrics["status"] == "collapsed", metrics["test/Recall@20"]
        assert "callbacks.alignment_schedule.lambda_max=1" in metrics["collapse"]
        assert metrics["epochs_run"] < 15  # stopped early
    assert healthy or metrics["status"] == "collapsed"
    assert not (metrics["status"] == "ok" and not healthy)
