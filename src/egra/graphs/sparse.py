"""Sparse matrix x dense matrix products with a fast, exact backward.

torch's CSR ``sparse.mm`` has a fast forward on CPU but a slow backward, and COO is slow
both ways. :class:`SparseOp` holds ``A`` and ``Aᵀ`` as CSR tensors and uses ``Aᵀ g`` as
the gradient, so backward costs one more forward-sized product. When ``A`` is symmetric
(normalised adjacencies are) the transpose is ``A`` itself and is not stored twice.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn


def scipy_to_torch_csr(m: sp.spmatrix, dtype: torch.dtype = torch.float32) -> Tensor:
    m = sp.csr_matrix(m)
    m.sort_indices()
    with warnings.catch_warnings():
        # "CSR support is in beta": the operations used here are stable in practice.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)).to(dtype),
            size=m.shape,
            check_invariants=False,
        )


def is_symmetric(m: sp.spmatrix, tol: float = 1e-6) -> bool:
    m = sp.csr_matrix(m)
    if m.shape[0] != m.shape[1]:
        return False
    diff = abs(m - m.T)
    return diff.nnz == 0 or float(diff.max()) <= tol


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.a_t, grad.contiguous())


class SparseOp(nn.Module):
    """A fixed sparse matrix ``A`` (no parameters) applied as ``A @ x`` with autograd.

    The CSR tensors are plain attributes, not buffers: they move with ``.to(device)``
    (see ``_apply``) but stay out of ``state_dict`` (constant graphs are rebuilt from
    data) and out of DDP's buffer broadcast, which cannot handle sparse tensors.
    """

    def __init__(self, matrix: sp.spmatrix):
        super().__init__()
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.shape = matrix.shape
        self.symmetric = is_symmetric(matrix)
        self.a = scipy_to_torch_csr(matrix)
        self.a_t = None if self.symmetric else scipy_to_torch_csr(matrix.T.tocsr())

    def _apply(self, fn, recurse=True):
        self.a = fn(self.a)
        if self.a_t is not None:
            self.a_t = fn(self.a_t)
        return super()._apply(fn, recurse)

    @property
    def nnz(self) -> int:
        return int(self.a.values().numel())

    def forward(self, x: Tensor) -> Tensor:
        a_t = self.a if self.a_t is None else self.a_t
        if x.dtype != self.a.dtype:
            x = x.to(self.a.dtype)
        if not torch.is_grad_enabled() or not x.requires_grad:
            return torch.sparse.mm(self.a, x)
        return _SpMM.apply(self.a, a_t, x)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, nnz={self.nnz}, symmetric={self.symmetric}"
