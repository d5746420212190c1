"""What every multimodal model sets up the same way: its modalities, their raw feature tables
and their item-item graphs ``S_m``.

MGCN, FREEDOM and EGRA (through MGCN) derive from :class:`MultimodalRecommender` and call
:meth:`~MultimodalRecommender.setup_modalities` once in their constructor; the checks, the
feature tables (``feat_<m>``: parameters when trained, :class:`~egra.models.base.Constant`
otherwise) and the
projections ``proj[m]: d_m -> d`` are written here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from egra.models.base import Constant, Recommender


def as_float_tensor(x) -> Tensor:
    """A float32 copy that owns its memory (training must not write into the caller's array)."""
    if isinstance(x, Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    return torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))


class MultimodalRecommender(Recommender):
    """A recommender that reads item features and one item-item graph per modality."""

    modalities: tuple[str, ...]

    def setup_modalities(
        self,
        features: Mapping[str, np.ndarray | Tensor] | None,
        modality_graphs: Mapping[str, sp.spmatrix] | None,
        modalities: Sequence[str] | None,
        embedding_dim: int,
        train_features: bool,
        graph_hint: str = "egra.graphs.modality_graphs(features, k)",
        per_modality: Callable[[str], None] | None = None,
    ) -> dict[str, sp.csr_matrix]:
        """Check and register the modalities; return their graphs ``S_m`` (float32 CSR).

        ``modalities`` defaults to the sorted keys of ``features``. Every modality needs a
        ``[n_items, d_m]`` feature table and an ``[n_items, n_items]`` graph; the table becomes
        ``feat_<m>`` (a parameter with ``train_features``, else a
        :class:`~egra.models.base.Constant`: outside ``state_dict`` and DDP's buffer broadcast) and
        gets a projection ``proj[m] = Linear(d_m, embedding_dim)``, followed by
        ``per_modality(m)`` (a model's own layers for ``m``: created in this order, the
        parameters draw the same random numbers as when each model wrote its own loop).
        """
        name = type(self).__name__
        if not features:
            raise ValueError(f"{name} needs at least one modality: `features` is empty or None")
        chosen = sorted(features) if modalities is None else list(modalities)
        if not chosen:
            raise ValueError(f"{name} needs at least one modality: `modalities` is empty")
        missing = [m for m in chosen if m not in features]
        if missing:
            raise ValueError(f"modalities {missing} not in features (have {sorted(features)})")
        no_graph = [m for m in chosen if m not in (modality_graphs or {})]
        if no_graph:
            raise ValueError(
                f"no kNN graph S_m for modalities {no_graph} in `modality_graphs`: build them with {graph_hint}"
            )
        self.modalities = tuple(chosen)
        self.train_features = train_features
        if "proj" not in self._modules:  # a model may create it first, to keep its module order
            self.proj = nn.ModuleDict()
        graphs: dict[str, sp.csr_matrix] = {}
        for m in self.modalities:
            x = as_float_tensor(features[m])
            if x.ndim != 2 or x.shape[0] != self.n_items:
                raise ValueError(f"features[{m!r}] has shape {tuple(x.shape)}, expected ({self.n_items}, d)")
            g = sp.csr_matrix(modality_graphs[m], dtype=np.float32)
            if g.shape != (self.n_items, self.n_items):
                raise ValueError(
                    f"modality_graphs[{m!r}] has shape {g.shape}, expected ({self.n_items},) * 2"
                )
            graphs[m] = g
            if train_features:
                self.register_parameter(f"feat_{m}", nn.Parameter(x))
            else:
                self.add_module(f"feat_{m}", Constant(x))
            self.proj[m] = nn.Linear(x.shape[1], embedding_dim)
            if per_modality is not None:
                per_modality(m)
        return graphs

    def feature(self, m: str) -> Tensor:
        """Raw feature table ``X_m`` (``[I, d_m]``; a parameter when trainable)."""
        table = getattr(self, f"feat_{m}")
        return table.value if isinstance(table, Constant) else table
