"""DDP on CPU (2 spawned gloo processes): evaluation counts every user exactly once."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from egra.pipeline.train import build_module, build_net


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
    module = build_module(cfg, dm, build_net(cfg, dm))
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


def test_share_weights_make_the_ddp_gradient_the_global_batch_gradient():
    import numpy as np

    from egra.models import BPRMF
    from egra.training.module import share_weight

    torch.manual_seed(0)
    net = BPRMF(n_users=20, n_items=15, embedding_dim=8, reg_weight=0.0)  # BPR: a mean over rows
    rng = np.random.default_rng(0)
    batch = torch.as_tensor(rng.integers(0, 15, size=(3, 11)))
    batch[0] = torch.as_tensor(rng.integers(0, 20, size=11))

    def grads(loss):
        net.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in net.parameters()]

    full = grads(net.loss(*batch)["loss"])
    world, summed = 3, None
    for share in np.array_split(np.arange(11), world):  # uneven shares: 4, 4, 3
        w = share_weight(torch.tensor(len(share)), torch.tensor(11), world)
        g = grads(net.loss(*batch[:, share])["loss"] * w)
        summed = g if summed is None else [a + b for a, b in zip(summed, g)]
    for a, b in zip(full, summed):
        torch.testing.assert_close(a, b / world)  # DDP averages gradients over ranks
