"""Dense float32 products on the CPU through the BLAS that is faster for their shape.

torch's CPU ``matmul`` calls MKL, numpy's calls OpenBLAS. At one thread on the 2-core
AMD EPYC this project is benchmarked on (a one-off timing, best of 4), MKL took 187 ms
and OpenBLAS 128 ms for ``∂X = g W`` of a projection (``g`` ``[7050, 64]``, ``W``
``[64, 4096]``: small inner dimension, large output), and 127 vs 108 ms for ``∂W = gᵀ X``;
MKL was as fast or faster for the other products of this project. Callers
use :func:`mm` only for those two products (the MGCN/EGRA feature projection's backward);
the choice depends on the call site and settings alone, never on timing, so a seeded run
is reproducible.

Set ``EGRA_DENSE_BLAS=torch`` to keep every product in torch (e.g. on Intel CPUs).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

__all__ = ["mm", "numpy_blas_enabled", "set_blas_threads"]


def numpy_blas_enabled() -> bool:
    return os.environ.get("EGRA_DENSE_BLAS", "auto").lower() != "torch"


def _numpy_ok(*ts: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 for t in ts)


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D tensors without autograd; float32 CPU products through numpy's BLAS.

    Transposed views (``g.T``) are passed as such: BLAS reads them with its transpose
    flag, no copy. Other dtypes / devices, or ``EGRA_DENSE_BLAS=torch``: ``torch.mm``.
    """
    if numpy_blas_enabled() and _numpy_ok(a, b):
        # The result lives in torch's allocator (huge pages, reused blocks): a fresh numpy
        # array of a [7050, 4096] gradient costs ~30k page faults per step.
        out = torch.empty((a.shape[0], b.shape[1]), dtype=torch.float32)
        np.matmul(a.detach().numpy(), b.detach().numpy(), out=out.numpy())
        return out
    return torch.mm(a, b)


def set_blas_threads(n: int) -> None:
    """Limit every BLAS in the process (MKL, OpenBLAS, ...) to ``n`` threads.

    ``torch.set_num_threads`` covers torch's own pools; numpy's OpenBLAS has its own,
    which would otherwise use every core.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=int(n), user_api="blas")
