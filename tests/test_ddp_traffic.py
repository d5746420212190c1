"""bench/ddp_traffic.py: gradient bytes per DDP step, scaled from the models' real parameters."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_path = Path(__file__).resolve().parents[1] / "bench" / "ddp_traffic.py"
_spec = importlib.util.spec_from_file_location("ddp_traffic", _path)
traffic = importlib.util.module_from_spec(_spec)
sys.modules["ddp_traffic"] = traffic
_spec.loader.exec_module(traffic)


def test_gradient_bytes_scale_user_and_item_rows_and_skip_frozen_features():
    from egra.graphs import modality_graphs
    from egra.models import MGCN

    data = traffic._toy(image_dim=12, text_dim=6)
    graphs = modality_graphs(data["features"], 3, device="cpu")
    for train_features in (True, False):
        torch.manual_seed(0)
        net = MGCN(**data, embedding_dim=8, modality_graphs=graphs, train_features=train_features)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad) * 4
        assert traffic.gradient_bytes(net, traffic.U0, traffic.I0)["total"] == trainable
        big = traffic.gradient_bytes(net, 10 * traffic.U0, 10 * traffic.I0)
        # 9 more copies of every user row (8 wide) and item row (8 wide, plus 12 + 6 of features).
        per_item = 8 + (12 + 6 if train_features else 0)
        assert big["total"] - trainable == 9 * (traffic.U0 * 8 + traffic.I0 * per_item) * 4
        assert big["feature_tables"] == (10 * traffic.I0 * 18 * 4 if train_features else 0)
