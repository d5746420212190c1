"""The collapse guard: stops contrastive models whose training collapsed, and only those."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from egra.metrics import ranking_metrics
from egra.metrics.popularity import mostpop_metrics
from egra.training.callbacks import CollapseGuard

LN2 = math.log(2)


class _Net:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


class _Trainer:
    sanity_checking = False

    def __init__(self):
        self.current_epoch, self.global_step, self.should_stop = 0, 0, False
        self.callback_metrics: dict[str, torch.Tensor] = {}


class _Module:
    def __init__(self, net):
        self.net = net


def _feed(guard, net, curve, steps_per_epoch=50):
    """Validations with (bpr, valid Recall@20) per epoch; returns the epoch the guard stopped at."""
    tr, pl = _Trainer(), _Module(net)
    for epoch, (bpr, score) in enumerate(curve):
        tr.current_epoch, tr.global_step = epoch, (epoch + 1) * steps_per_epoch
        tr.callback_metrics = {"train/loss_bpr": torch.tensor(bpr), "valid/Recall@20": torch.tensor(score)}
        guard.on_validation_end(tr, pl)
        if tr.should_stop:
            return epoch
    return None


EGRA_NET = dict(align_weight=0.1, lambda_max=0.1, P=4, lambda_warmup=0)


def test_collapse_after_ramp_is_stopped_with_the_weight_named():
    guard = CollapseGuard(patience=3, min_steps=100)
    guard.mostpop_score = 0.05
    # learns a little, then alignment takes over: BPR back at ln 2, Recall falls
    curve = [(0.69, 0.03), (0.68, 0.06), (0.69, 0.05), (0.693, 0.04), (LN2, 0.03), (LN2, 0.02), (LN2, 0.02)]
    stopped = _feed(guard, _Net(**EGRA_NET), curve)
    assert stopped == 6  # epochs 4, 5, 6 after the ramp (P = 4): three strikes
    assert "model.lambda_max=0.1" in guard.reason and "align_scale=chance" in guard.reason
    assert "≈ ln 2" in guard.reason and "MostPop" in guard.reason


def test_slow_healthy_start_and_ramp_never_count():
    guard = CollapseGuard(patience=2, min_steps=100)
    guard.mostpop_score = 0.05
    # BPR near ln 2 and below MostPop, but a new best every validation: healthy
    curve = [(LN2, 0.01 + 0.004 * e) for e in range(12)]
    assert _feed(guard, _Net(**EGRA_NET), curve) is None and guard.reason is None
    # the same collapse before the ramp ends (P = 20) is left alone
    guard = CollapseGuard(patience=2, min_steps=100)
    guard.mostpop_score = 0.05
    flat = [(LN2, 0.02)] * 12
    assert _feed(guard, _Net(**{**EGRA_NET, "P": 20}), flat) is None
    # ... and so is one before min_steps optimizer steps
    guard = CollapseGuard(patience=2, min_steps=10_000)
    assert _feed(guard, _Net(**EGRA_NET), flat) is None


def test_mgcn_weight_and_models_without_contrastive_term():
    guard = CollapseGuard(patience=2, min_steps=0, mostpop=False)
    stopped = _feed(guard, _Net(cl_loss=0.1), [(0.6, 0.1), (LN2, 0.05), (LN2, 0.05)])
    assert stopped == 2 and "model.cl_loss=0.1" in guard.reason and "cl_loss=0.01" in guard.reason
    guard = CollapseGuard(patience=1, min_steps=0)
    assert _feed(guard, _Net(n_layers=2), [(LN2, 0.0)] * 5) is None  # LightGCN: no contrastive weight
    with pytest.raises(ValueError, match="patience"):
        CollapseGuard(patience=0)


def test_mostpop_metrics_equals_dense_ranking():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    tu = rng.integers(0, n_users, 400)
    ti = (rng.zipf(1.5, 400) - 1) % n_items
    vu = rng.integers(0, n_users, 60)
    vi = rng.integers(0, n_items, 60)
    got = mostpop_metrics(tu, ti, vu, vi, n_items, ks=(5, 10))
    counts = np.bincount(ti, minlength=n_items).astype(np.float64)
    scores = np.tile(counts, (n_users, 1))
    scores[tu, ti] = -np.inf
    topk = torch.from_numpy(np.argsort(-scores, axis=1, kind="stable")[:, :10].copy())
    want = ranking_metrics(topk, torch.from_numpy(vu), torch.from_numpy(vi), n_items, ks=[5, 10])
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


class _Fitted:
    """A module as the guard sees it: the net, the last epoch's losses, the last evaluation's scale."""

    def __init__(self, net, scale=0.5, losses=None):
        self.net, self.eval_scale, self.train_epoch_loss = net, scale, dict(losses or {"train/loss": 0.6})


@pytest.mark.parametrize(
    ("scale", "losses", "needle"),
    [
        (float("nan"), None, "not finite (NaN or inf)"),
        (float("inf"), None, "not finite (NaN or inf)"),
        (2.0e5, None, "|x| = 2e+05 (> callbacks.collapse_guard.max_abs=10000)"),
        (0.5, {"train/loss": float("nan"), "train/loss_bpr": 0.7}, "training loss train/loss is not finite"),
    ],
)
def test_divergence_stops_any_model(scale, losses, needle):
    guard = CollapseGuard()
    tr = _Trainer()
    tr.current_epoch = 3
    guard.on_validation_end(tr, _Fitted(_Net(n_layers=2), scale, losses))  # no contrastive term
    assert tr.should_stop and guard.status == "diverged" and needle in guard.reason
    assert "lower optim.optimizer.lr" in guard.reason
    assert guard.state_dict()["status"] == "diverged"


def test_healthy_values_and_the_last_epochs_without_validation():
    guard = CollapseGuard(max_abs=100.0)
    tr = _Trainer()
    guard.on_validation_end(tr, _Fitted(_Net(n_layers=2), scale=99.0))
    assert not tr.should_stop and guard.status is None
    # epochs after the last validation: their loss is checked when the fit ends
    guard.on_train_end(tr, _Fitted(_Net(n_layers=2), scale=99.0, losses={"train/loss": float("inf")}))
    assert guard.status == "diverged" and "train/loss is not finite" in guard.reason
    with pytest.raises(ValueError, match="max_abs"):
        CollapseGuard(max_abs=0)


def test_the_final_evaluation_never_changes_the_status():
    guard = CollapseGuard()
    tr = _Trainer()
    tr.state = type("State", (), {"fn": "validate"})()
    guard.on_validation_end(tr, _Fitted(_Net(n_layers=2), scale=float("nan")))
    assert guard.status is None and not tr.should_stop


def test_a_checkpoint_of_the_collapse_guard_before_statuses_reads_as_collapsed():
    guard = CollapseGuard()
    guard.load_state_dict({"reason": "collapsed at epoch 4: ...", "strikes": 3, "best": 0.1})
    assert guard.status == "collapsed"
