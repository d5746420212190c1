"""Graph construction and sparse propagation (no model code here)."""

from egra.graphs.adjacency import (
    PT_NORMS,
    bipartite_adjacency,
    enhanced_adjacency,
    interaction_matrix,
    normalized_bipartite,
    sym_normalize,
    user_item_block,
)
from egra.graphs.consistency import consistent_knn_graphs
from egra.graphs.cooccurrence import cooccurrence_counts, cooccurrence_graph
from egra.graphs.knn import (
    graph_digest,
    graph_stats,
    knn_graph,
    knn_graph_preset,
    modality_graphs,
    rank_device,
    topk_neighbors,
)
from egra.graphs.sparse import SparseOp, scipy_to_torch_csr

__all__ = [
    "PT_NORMS",
    "SparseOp",
    "bipartite_adjacency",
    "consistent_knn_graphs",
    "cooccurrence_counts",
    "cooccurrence_graph",
    "enhanced_adjacency",
    "graph_digest",
    "graph_stats",
    "knn_graph",
    "knn_graph_preset",
    "modality_graphs",
    "rank_device",
    "topk_neighbors",
    "interaction_matrix",
    "normalized_bipartite",
    "scipy_to_torch_csr",
    "sym_normalize",
    "user_item_block",
]
