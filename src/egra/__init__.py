"""EGRA and baselines for multimodal recommendation.

The code reads like the pipeline it runs: load data -> pretrain backbone -> build top-K
graph -> train EGRA -> evaluate -> report.
"""

import os

# Transparent huge pages for torch's CPU allocator: large per-step buffers (feature
# gradients) otherwise pay for page faults every step. Must be set before torch loads.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
