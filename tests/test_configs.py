"""Every primary and experiment config composes; synthetic ones instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from egra.pipeline.fit import build_net
from egra.pipeline.graph import GraphSpec, build_graphs, constructor_config
from tests.conftest import CONF_DIR, make_cfg

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
REAL = ("baby", "sports", "clothing", "elec", "microlens", "mmrec")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(tmp_path, name):
    cfg = make_cfg(tmp_path, [f"experiment={name}", "data=synthetic", "data.preset=tiny"])
    assert cfg.model._target_.startswith("egra.models.")
    assert cfg.task_name == name or name.startswith(
        ("egra_graph", "egra_no", "egra_fixed", "egra_entity", "egra_epoch")
    )


@pytest.mark.parametrize("model", ["bpr", "lightgcn", "mgcn", "freedom", "lgmrec", "damrs", "egra"])
def test_models_instantiate_on_tiny(tmp_path, model):
    # Through the graph stage: a model that got an argument it does not take would fail here.
    cfg = make_cfg(tmp_path, [f"model={model}"] + (["model.graph_source=none"] if model == "egra" else []))
    dm = instantiate(cfg.data)
    dm.setup()
    graphs = build_graphs(cfg, dm, GraphSpec.of(cfg.model))
    assert set(graphs.modality) == (
        {"image", "text"} if model in ("mgcn", "freedom", "damrs", "egra") else set()
    )
    net = build_net(constructor_config(cfg.model), dm, graphs.model_inputs())
    u, i = net.embeddings()
    assert u.shape == (dm.data.n_users, 64) and i.shape == (dm.data.n_items, 64)


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_sim"])
def test_trainer_configs_compose(tmp_path, trainer):
    cfg = make_cfg(tmp_path, [f"trainer={trainer}"])
    assert cfg.trainer._target_ == "lightning.Trainer"
    assert cfg.trainer.use_distributed_sampler is False


@pytest.mark.parametrize("data", REAL)
def test_real_data_configs_point_at_data_dir(tmp_path, data):
    overrides = [f"data={data}"] + (["data.root=/some/where"] if data == "mmrec" else [])
    cfg = make_cfg(tmp_path, overrides, tiny=False)
    assert cfg.data.source == "mmrec"


def test_pretrain_config_composes(tmp_path):
    cfg = make_cfg(tmp_path, ["backbone=lightgcn"], config_name="pretrain")
    assert cfg.backbone == "lightgcn" and cfg.task_name == "pretrain"
    assert set(cfg.backbones) == {"mgcn", "freedom", "lgmrec", "damrs", "lightgcn", "raw_features", "random"}
