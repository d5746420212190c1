"""Backbone sweeps (issue 14): hparams_search=backbones | backbone_epochs and the backbone
options they rest on (early_stop, weights), and the report's plot per categorical choice."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from egra.pipeline import pretrain
from egra.pipeline.checks import ConfigError, check_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _sweep(name: str, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={name}", *extra], return_hydra_config=True)
    return cfg, {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def test_backbones_sweep_covers_every_backbone_and_each_job_is_valid():
    cfg, params = _sweep("backbones")
    assert str(cfg.hydra.mode).endswith("MULTIRUN") and cfg.model._target_ == "egra.models.EGRA"
    sources = params["graph.graph_source"]
    assert sources == ["mgcn", "freedom", "lgmrec", "damrs", "lightgcn", "raw_features", "random"]
    for s in sources:  # every job passes the checks run before any stage
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            check_config(compose("train", overrides=["hparams_search=backbones", f"graph.graph_source={s}"]))


def test_backbone_epochs_sweep_trains_exactly_n_epochs_and_exports_the_last():
    cfg, params = _sweep("backbone_epochs")
    assert params == {"backbones.mgcn.max_epochs": ["10", "50", "100"]}
    mgcn = cfg.backbones.mgcn
    assert cfg.graph.graph_source == "mgcn" and mgcn.early_stop is False and mgcn.weights == "last"


def test_backbone_options_are_checked():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["model=egra", "backbones.mgcn.weights=final"])
    with pytest.raises(ConfigError, match=r"backbones\.mgcn\.weights='final': expected one of best, last"):
        check_config(cfg)


def test_defaults_keep_the_artifact_key_of_older_caches(cfg_factory):
    base = cfg_factory(["model=egra"])
    plain = copy.deepcopy(base)
    with open_dict(plain):
        for k in ("early_stop", "weights"):
            del plain.backbones.mgcn[k]
    last = cfg_factory(["model=egra", "backbones.mgcn.weights=last"])
    assert pretrain._key(base, "mgcn", "fp") == pretrain._key(plain, "mgcn", "fp")
    assert pretrain._key(last, "mgcn", "fp") != pretrain._key(base, "mgcn", "fp")


@pytest.mark.parametrize("early_stop,weights", [(True, "best"), (False, "last")])
def test_backbone_early_stop_and_exported_weights(cfg_factory, monkeypatch, early_stop, weights, one_thread):
    # min_delta 1 makes every validation after the first a non-improvement: patience 1 stops
    # the fit at its second epoch unless early stopping is off.
    cfg = cfg_factory(
        [
            "backbone=mgcn",
            "backbones.mgcn.max_epochs=4",
            f"backbones.mgcn.early_stop={str(early_stop).lower()}",
            f"backbones.mgcn.weights={weights}",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=1.0",
        ],
        config_name="pretrain",
    )
    seen = []
    real = pretrain.evaluate

    def spy(sub, dm, fitted, *a, **k):
        seen.append(fitted.best_path)
        return real(sub, dm, fitted, *a, **k)

    monkeypatch.setattr(pretrain, "evaluate", spy)
    art = pretrain.run(cfg)
    assert art.manifest["metrics"]["epochs_run"] == (2 if early_stop else 4)
    # best: validation, test and export restore the best-valid checkpoint; last: no restore.
    assert (seen[0] is None) == (weights == "last")
