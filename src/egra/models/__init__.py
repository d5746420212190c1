"""Plain ``nn.Module`` recommenders (no Lightning, Hydra or W&B in here)."""

from egra.models.base import Recommender
from egra.models.lightgcn import BPRMF, LightGCN
from egra.models.mgcn import MGCN, MGCNViews

__all__ = ["BPRMF", "MGCN", "LightGCN", "MGCNViews", "Recommender"]
