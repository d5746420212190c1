"""Sparse matrix x dense matrix products with a fast, exact backward.

torch's CSR ``sparse.mm`` is slow on CPU (about 3x scipy's forward, 8x its backward:
it zero-fills and copies the output around an MKL call, and its backward goes through
a sparse-gradient path), and COO is slow both ways. :class:`SparseOp` holds ``A`` and
``Aᵀ`` and uses ``Aᵀ g`` as the gradient, so backward costs one more forward-sized
product. When ``A`` is symmetric (normalised adjacencies are) the transpose is ``A``
itself and is not stored twice.

On the CPU the products run in scipy's CSR kernel on zero-copy numpy views of the
tensors (one pass over the non-zeros, no extra buffers); on other devices in torch's
CSR ``sparse.mm``. Both compute the same sums (float32, row by row), so results agree
to float rounding.
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


_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}

# A batch's graph products are kept to the rows it reads (LightGCN's lower layers, MGCN's
# item views) when those are at most this part of the operand's rows; above it whole-table
# products are cheaper. Baby batches read ~91% of the nodes, a 200k-item catalog's ~37%.
MAX_ROW_SUBSET = 0.5


def _scipy_mm(m: sp.spmatrix, x: Tensor) -> Tensor:
    """``m @ x`` for a CPU tensor ``x`` through scipy (no copy of a contiguous ``x``)."""
    out = m @ x.detach().contiguous().numpy()
    return torch.from_numpy(out)


def _sparse_mm(a: Tensor, x: Tensor) -> Tensor:
    """``a @ x`` in ``a``'s dtype with autocast off: under mixed precision autocast would cast
    the dense operand to bf16/fp16, which the sparse kernels lack (CPU) or which loses the
    precision of sums over many neighbours."""
    with torch.autocast(x.device.type, enabled=False):
        return torch.sparse.mm(a, x.to(a.dtype))


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        ctx.x_dtype = x.dtype
        return _sparse_mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, None, _sparse_mm(ctx.a_t, grad.contiguous()).to(ctx.x_dtype)


class _ScipySpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, a: sp.spmatrix, a_t: sp.spmatrix) -> Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return _scipy_mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _scipy_mm(ctx.a_t, grad), None, None


class SparseOp(nn.Module):
    """A fixed sparse matrix ``A`` (no parameters) applied as ``A @ x`` with autograd.

    ``a`` / ``a_t`` are torch CSR tensors, plain attributes rather than buffers: they
    move with ``.to(device)`` (see ``_apply``) but stay out of ``state_dict`` (constant
    graphs are rebuilt from data) and out of DDP's buffer broadcast, which cannot handle
    sparse tensors. Scipy copies of the same matrices serve the CPU.
    """

    def __init__(self, matrix: sp.spmatrix):
        super().__init__()
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        matrix.sum_duplicates()
        matrix.sort_indices()
        self.shape = matrix.shape
        self.symmetric = is_symmetric(matrix)
        matrix_t = matrix if self.symmetric else matrix.T.tocsr()
        matrix_t.sort_indices()
        # scipy (A, Aᵀ) by numpy dtype, for the CPU path; float64 is made on demand.
        self._sp = {np.dtype(np.float32): (matrix, matrix_t)}
        self.a = scipy_to_torch_csr(matrix)
        self.a_t = None if self.symmetric else scipy_to_torch_csr(matrix_t)

    def _apply(self, fn, recurse=True):
        self.a = fn(self.a)
        if self.a_t is not None:
            self.a_t = fn(self.a_t)
        return super()._apply(fn, recurse)

    @property
    def nnz(self) -> int:
        return int(self._sp[np.dtype(np.float32)][0].nnz)

    def cpu_matrices(self, x: Tensor) -> tuple[sp.csr_matrix, sp.csr_matrix] | None:
        """``(A, Aᵀ)`` as scipy matrices of ``x``'s dtype when the product runs in scipy.

        None when ``x`` or ``A`` is off the CPU or scipy has no such dtype (torch's CSR
        product is used then).
        """
        np_dtype = _NUMPY_DTYPES.get(x.dtype)
        if np_dtype is None or x.device.type != "cpu" or self.a.device.type != "cpu":
            return None
        if np_dtype not in self._sp:
            a, a_t = self._sp[np.dtype(np.float32)]
            a64 = a.astype(np_dtype)
            self._sp[np_dtype] = (a64, a64 if self.symmetric else a_t.astype(np_dtype))
        return self._sp[np_dtype]

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != self.a.dtype:
            x = x.to(self.a.dtype)
        mats = self.cpu_matrices(x)
        if mats is not None:
            if not torch.is_grad_enabled() or not x.requires_grad:
                return _scipy_mm(mats[0], x)
            return _ScipySpMM.apply(x, *mats)
        if not torch.is_grad_enabled() or not x.requires_grad:
            return _sparse_mm(self.a, x)
        return _SpMM.apply(self.a, self.a if self.a_t is None else self.a_t, x)

    def rows(self, x: Tensor, rows: Tensor, x_rows: np.ndarray | None = None) -> Tensor:
        """``(A @ x)[rows]`` without the other rows: ``A[rows] @ x``, backward ``A[rows]ᵀ g``.

        Row ``r`` of the result is the same dot product as row ``rows[r]`` of
        ``forward(x)`` (same terms in the same order). Worth it when ``rows`` is a small
        part of ``A``'s rows, e.g. the users and items of one training batch.

        ``x_rows`` (sorted distinct ids): ``x`` holds only those rows of the operand,
        ``x = X[x_rows]``, which must include every column ``A[rows]`` touches
        (:meth:`columns`); the result is still ``(A @ X)[rows]``.
        """
        if x.dtype != self.a.dtype:
            x = x.to(self.a.dtype)
        mats = self.cpu_matrices(x)
        if mats is None:
            if x_rows is not None:
                full = x.new_zeros(self.shape[1], x.shape[1])
                x = full.index_copy(0, torch.as_tensor(x_rows, device=x.device), x)
            return self(x)[rows]
        sub = mats[0][rows.detach().cpu().numpy()]
        if x_rows is not None:
            sub = restrict_columns(sub, x_rows)
        if not torch.is_grad_enabled() or not x.requires_grad:
            return _scipy_mm(sub, x)
        return _ScipySpMM.apply(x, sub, sub.T)

    def columns(self, rows: Tensor | np.ndarray, extra: Tensor | np.ndarray | None = None) -> np.ndarray:
        """Sorted distinct column ids that ``A[rows]`` touches, united with ``extra``'s ids."""
        a = self._sp[np.dtype(np.float32)][0]
        return touched_columns(a[_as_ids(rows)], None if extra is None else _as_ids(extra))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, nnz={self.nnz}, symmetric={self.symmetric}"


def _as_ids(ids: Tensor | np.ndarray) -> np.ndarray:
    return ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)


def touched_columns(m: sp.csr_matrix, extra: np.ndarray | None = None) -> np.ndarray:
    """Sorted distinct ids of the columns ``m`` has non-zeros in, united with ``extra``."""
    mark = np.zeros(m.shape[1], dtype=bool)
    mark[m.indices] = True
    if extra is not None:
        mark[extra] = True
    return np.flatnonzero(mark)


def restrict_columns(m: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    """``m[:, cols]`` for sorted distinct ``cols`` that hold every column ``m`` touches.

    The non-zeros keep their order (the map from old to new column ids is increasing), so
    each row of ``restrict_columns(m, cols) @ X[cols]`` is the same sum, term for term, as
    that row of ``m @ X``. O(nnz + columns); no copy of the values.
    """
    where = np.full(m.shape[1], -1, dtype=np.int64)
    where[cols] = np.arange(len(cols))
    idx = where[m.indices]
    if idx.size and idx.min() < 0:
        raise ValueError("restrict_columns: the matrix touches columns outside `cols`")
    return sp.csr_matrix((m.data, idx.astype(m.indices.dtype), m.indptr), shape=(m.shape[0], len(cols)))
