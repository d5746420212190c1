"""EGRA and baselines for multimodal recommendation.

The code reads like the pipeline it runs: load data -> pretrain backbone -> build top-K
graph -> train EGRA -> evaluate -> report.
"""

__version__ = "0.1.0"
