"""Ranking metrics (MMRec formulas) and item popularity groups: pure torch/numpy functions."""

from egra.metrics.popularity import group_truth, popularity_groups
from egra.metrics.ranking import (
    DEFAULT_KS,
    METRICS,
    chunk_metric_sums,
    count_relevant,
    hit_matrix,
    means_from_sums,
    merge_sums,
    metric_rows,
    metric_sums,
    rank_metric_rows,
    rank_metric_sums,
    ranking_metrics,
    truth_keys,
    truth_ranks,
)

__all__ = [
    "DEFAULT_KS",
    "METRICS",
    "chunk_metric_sums",
    "count_relevant",
    "group_truth",
    "hit_matrix",
    "means_from_sums",
    "merge_sums",
    "metric_rows",
    "metric_sums",
    "popularity_groups",
    "rank_metric_rows",
    "rank_metric_sums",
    "ranking_metrics",
    "truth_keys",
    "truth_ranks",
]
