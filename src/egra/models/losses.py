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


class _CountedNCE(torch.autograd.Function):
    """``Σ_r w_r (log Σ_j c_j exp(a_r·p_j) − a_r·p_r)`` on normalised, τ-scaled rows.

    One ``n x n`` buffer and no ``n x n`` pass besides the product and one ``exp``: the
    forward exponentiates the logits in place and keeps them; the counts, the softmax's
    row normalisation and the weights are folded into ``n``-vectors and ``n x d``
    scalings, so the backward is two matrix products. ``shift`` subtracts each row's
    maximum first, needed only when ``1/τ`` is large enough for ``exp`` to overflow.
    """

    @staticmethod
    def forward(ctx, a: Tensor, p: Tensor, counts: Tensor, weights: Tensor, shift: bool) -> Tensor:  # type: ignore[override]
        e = a @ p.T
        if shift:
            row_max = e.amax(dim=1)
            e.sub_(row_max.unsqueeze(1))
        e.exp_()
        row_sum = e @ counts  # Σ_j c_j exp(·)
        lse = row_sum.log()
        if shift:
            lse = lse + row_max
        pos = (a * p).sum(dim=1)
        ctx.save_for_backward(a, p, e, row_sum, counts, weights)
        return (weights * (lse - pos)).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, p, e, row_sum, counts, weights = ctx.saved_tensors
        gw = (grad * weights).unsqueeze(1)
        scale = gw / row_sum.unsqueeze(1)
        c = counts.unsqueeze(1)
        grad_a = scale * (e @ (c * p)) - gw * p
        grad_p = c * (e.T @ (scale * a)) - gw * a
        return grad_a, grad_p, None, None, None


def info_nce_counts(
    anchor: Tensor,
    positive: Tensor,
    temperature: float,
    counts: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """:func:`info_nce` (mean reduction) over distinct rows that each stand for ``counts[j]`` rows.

    With ``idx`` a batch of ids and ``uniq, counts = idx.unique(return_counts=True)``,
    ``info_nce_counts(A[uniq], B[uniq], τ, counts)`` equals ``info_nce(A[idx], B[idx], τ)``:
    a repeated row is still its own false negative (it enters the denominator
    ``counts[j]`` times) and each distinct row's loss is weighted by its count.
    ``counts=None`` means all ones. Cheaper than :func:`info_nce`: ``n_distinct²``
    instead of ``B²``, and fewer passes over the logits.

    ``weights`` (no gradient) replaces the per-row loss weights ``counts / Σ counts``:
    the result is ``Σ_j weights[j] · NCE_j``; for a weighted mean over the batch's
    positions pass ``counts · w / Σ counts · w``.
    """
    # The custom op runs in fp32 (or fp64) with autocast off: under mixed precision its
    # exp/log-sum and products would otherwise mix bf16 and fp32 operands, and a bf16
    # log-sum-exp over the batch loses the precision the loss needs.
    dtype = torch.promote_types(torch.promote_types(anchor.dtype, positive.dtype), torch.float32)
    with torch.autocast(anchor.device.type, enabled=False):
        a = F.normalize(anchor.to(dtype), dim=-1) / temperature
        p = F.normalize(positive.to(dtype), dim=-1)
        if counts is None:
            counts = torch.ones(a.shape[0], device=a.device, dtype=a.dtype)
        counts = counts.to(a.dtype)
        if weights is None:
            weights = counts / counts.sum()
        # |logit| <= 1/τ: without a shift, exp stays finite while 1/τ is well below ~88 - log n.
        shift = 1.0 / temperature > 20.0
        return _CountedNCE.apply(a, p, counts, weights.detach().to(a.dtype), shift)
