"""Plain ``nn.Module`` recommenders (no Lightning, Hydra or W&B in here)."""

from egra.models.base import Recommender
from egra.models.damrs import DAMRS
from egra.models.egra import EGRA
from egra.models.freedom import FREEDOM
from egra.models.lgmrec import LGMRec
from egra.models.lightgcn import BPRMF, LightGCN
from egra.models.mgcn import MGCN

__all__ = ["BPRMF", "DAMRS", "EGRA", "FREEDOM", "LGMRec", "MGCN", "LightGCN", "Recommender"]
