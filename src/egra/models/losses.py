"""Loss terms as small functions; models and Lightning modules add them up."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(u: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``-mean log σ(u·p − u·n)`` (log-sigmoid: no epsilon, no overflow)."""
    diff = (u * pos).sum(-1) - (u * neg).sum(-1)
    return -F.logsigmoid(diff).mean()


def l2_squared(*rows: Tensor, denom: float) -> Tensor:
    """MGCN's regulariser: ``½ Σ ‖rows‖_F² / denom`` (squared norms of the batch's rows)."""
    return sum(r.pow(2).sum() for r in rows) / 2.0 / denom


def l2_norms(*rows: Tensor, denom: float) -> Tensor:
    """MMRec LightGCN's regulariser: ``Σ ‖rows‖_F / denom`` (un-squared Frobenius norms)."""
    return sum(torch.linalg.norm(r) for r in rows) / denom


def info_nce(anchor: Tensor, positive: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """One-directional InfoNCE with in-batch negatives (MGCN's ``NCE(A, B)``).

    Row r of ``anchor`` is pulled towards row r of ``positive`` and pushed from the other
    rows of ``positive``, by cosine / temperature; the denominator includes the positive.
    With ``reduction="none"`` returns the per-row loss ``[B]``.
    """
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    logits = a @ p.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target, reduction=reduction)
