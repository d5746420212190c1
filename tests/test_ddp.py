"""DDP on CPU (2 spawned gloo processes): evaluation counts every user exactly once."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from egra.pipeline.fit import build_module, build_net


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.mark.slow
def test_ddp_validation_equals_single_process(cfg_factory):
    # Small eval chunks so that the two ranks get different numbers of chunks.
    cfg = cfg_factory(["model=lightgcn", "data.eval_batch_size=37"])
    L.seed_everything(0)
    dm = instantiate(cfg.data)
    dm.setup()
    module = build_module(cfg, dm, build_net(cfg.model, dm))
    # Train a little so the scores are not those of the initialisation.
    _trainer(max_epochs=2, devices=1).fit(module, datamodule=dm)
    state = {k: v.clone() for k, v in module.state_dict().items()}

    single = _trainer(devices=1).validate(module, datamodule=dm, verbose=False)[0]
    module.load_state_dict(state)
    multi = _trainer(devices=2, strategy="ddp_spawn").validate(module, datamodule=dm, verbose=False)[0]
    assert set(single) == set(multi)
    for key in single:
        assert multi[key] == pytest.approx(single[key], abs=1e-6), key
    assert single["valid/Recall@20"] > 0


@pytest.mark.slow
def test_ddp_training_runs_and_ranks_sample_differently(cfg_factory):
    from egra.pipeline.train import run

    metrics = run(cfg_factory(["model=lightgcn", "trainer=ddp_sim", "trainer.max_epochs=2"]))
    assert 0 <= metrics["test/Recall@20"] <= 1
    assert metrics["epochs_run"] == 2


def test_rank_shards_are_disjoint_under_world_size_two():
    from unittest import mock

    import numpy as np

    from egra.data import sampling

    users = np.arange(101)
    items = np.arange(101) % 7
    seen = []
    for rank in range(2):
        with mock.patch.object(sampling, "dist_info", return_value=(rank, 2)):
            s = sampling.BPRTriples(users, items, 7, batch_size=10, seed=0)
            seen.append(torch.cat(list(s), 1)[0].numpy())
    assert len(seen[0]) == len(seen[1]) == 50
    assert not set(seen[0]) & set(seen[1])
