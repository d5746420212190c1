"""Callbacks: the epoch-level alignment weight λ(t)."""

from __future__ import annotations

import math
import time

import lightning as L


def lambda_at(epoch: int, lambda_min: float, lambda_max: float, P: int, ramp: str = "linear") -> float:
    """``λ(t)``: from ``λ_min`` at epoch 0 to ``λ_max`` at epoch ``P`` (0-based), then constant.

    ``linear``: ``λ_min + (λ_max − λ_min)·min(1, t/P)``; ``cosine``: the same progress eased
    by ``(1 − cos(π·p))/2``; ``step``: ``λ_min`` before epoch ``P``, ``λ_max`` from it on.
    ``P = 0`` means constant ``λ_max``.
    """
    if P <= 0:
        return float(lambda_max)
    progress = min(1.0, max(0, epoch) / P)
    if ramp == "linear":
        shape = progress
    elif ramp == "cosine":
        shape = (1.0 - math.cos(math.pi * progress)) / 2.0
    elif ramp == "step":
        shape = 1.0 if progress >= 1.0 else 0.0
    else:
        raise ValueError(f"ramp must be 'linear', 'cosine' or 'step', got {ramp!r}")
    return float(lambda_min + (lambda_max - lambda_min) * shape)


class AlignmentSchedule(L.Callback):
    """Sets ``net.align_weight = λ(current_epoch)`` at every epoch start and logs ``align/lambda``.

    The value depends on the epoch alone, so a resumed run gets the same schedule. The
    schedule's parameters are the model's (``lambda_min``, ``lambda_max``, ``P``, ``ramp``);
    models without ``align_weight`` are left alone.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", None)
        if net is None or not hasattr(net, "align_weight"):
            return
        lam = lambda_at(trainer.current_epoch, net.lambda_min, net.lambda_max, net.P, net.ramp)
        net.align_weight = lam
        pl_module.log("align/lambda", lam, on_step=False, on_epoch=True)


class FitClock(L.Callback):
    """Training seconds across resumes: checkpoints carry the time spent before them, so a
    resumed run's ``fit_time_s`` counts the epochs before the kill too."""

    def __init__(self) -> None:
        self.before_s = 0.0
        self._start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def elapsed_s(self) -> float:
        return self.before_s + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict[str, float]:
        return {"fit_time_s": self.elapsed_s()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.before_s = float(state_dict.get("fit_time_s", 0.0))
