"""Every primary and experiment config composes; synthetic ones instantiate."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from egra.pipeline.checks import DATA_ARGUMENTS
from egra.pipeline.fit import build_net
from egra.pipeline.graph import GraphSpec, build_graphs
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
    cfg = make_cfg(tmp_path, [f"model={model}"] + (["graph.graph_source=none"] if model == "egra" else []))
    dm = instantiate(cfg.data)
    dm.setup()
    graphs = build_graphs(cfg, dm, GraphSpec.of(cfg.graph, cfg.model))
    assert set(graphs.modality) == (
        {"image", "text"} if model in ("mgcn", "freedom", "damrs", "egra") else set()
    )
    net = build_net(cfg.model, dm, graphs.model_inputs())
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


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")))
def test_constructor_defaults_are_the_model_config(name):
    """``Model(...)`` built in Python trains what ``model=<name>`` trains: every constructor
    argument the pipeline does not fill has the config's value as its default, and the config
    holds nothing else (no stage reads a model key)."""
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    cls = get_class(cfg._target_)
    params = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k != "self" and k not in DATA_ARGUMENTS and p.kind is p.KEYWORD_ONLY
    }
    keys = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("_target_", "_partial_")}
    assert set(keys) == set(params), name
    for k, v in keys.items():
        assert params[k] == v, (name, k, params[k], v)


def test_egra_alignment_weight_and_schedule_defaults_are_the_config(tmp_path):
    """λ lives with its callback: the callback's constructor defaults are the config's, and a
    model built in Python starts at the schedule's λ_max."""
    from egra.models.egra import ALIGN_WEIGHT
    from egra.training.callbacks import AlignmentSchedule

    cfg = make_cfg(tmp_path, ["model=egra"]).callbacks.alignment_schedule
    sig = inspect.signature(AlignmentSchedule.__init__).parameters
    assert {k: v for k, v in cfg.items() if k != "_target_"} == {
        k: p.default for k, p in sig.items() if k != "self"
    }
    assert ALIGN_WEIGHT == cfg.lambda_max


def test_schema_choices_are_the_codes_own():
    """The schema reads each list of choices from the code that branches on it (no import)."""
    from egra.data.sampling import DDP_BATCH_MODES
    from egra.data.synthetic import PRESETS
    from egra.graphs import PT_NORMS
    from egra.graphs.knn import METHODS, MODALITY_CONVENTIONS
    from egra.models import egra as egra_model
    from egra.pipeline import schema
    from egra.training.callbacks import RAMPS
    from egra.training.module import SUPPORTED_PRECISIONS

    assert schema.PRESETS == tuple(PRESETS) and schema.DDP_BATCH_MODES == DDP_BATCH_MODES
    assert (schema.PT_NORMS, schema.KNN_METHODS, schema.KNN_CONVENTIONS) == (
        PT_NORMS,
        METHODS,
        MODALITY_CONVENTIONS,
    )
    assert schema.RAMPS == RAMPS and schema.PRECISIONS == SUPPORTED_PRECISIONS
    for name in ("WEIGHTING_MODES", "ALIGN_SCALES", "ALIGN_VIEWS", "ALIGN_ANCHORS", "MODALITY_INPUTS"):
        assert getattr(schema, name) == getattr(egra_model, name), name
    # every key of a model's graphs feeds one constructor input
    fed = [k for keys in schema.GRAPH_INPUTS.values() for k in keys]
    assert sorted(fed) == sorted(schema.ModelGraphs.model_fields)


def test_signatures_read_from_source_match_the_imported_classes():
    from egra.pipeline.signatures import signature

    for target in (
        "egra.models.EGRA",
        "egra.models.MGCN",
        "egra.models.FREEDOM",
        "egra.models.LightGCN",
        "egra.models.BPRMF",
        "torch.optim.Adam",
        "lightning.Trainer",
        "egra.training.callbacks.AlignmentSchedule",
        "egra.data.datamodule.RecDataModule",
    ):
        cls = get_class(target)
        real = {
            k: p.default
            for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        sig = signature(target)
        assert set(sig.params) == set(real), target
        for k, p in sig.params.items():
            if isinstance(real[k], (bool, int, float, str)) and p.default is not None:
                assert p.default == real[k], (target, k)
    assert signature("egra.models.EGRA").attributes["VIEWS"] == get_class("egra.models.EGRA").VIEWS
