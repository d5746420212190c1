"""DDP on CPU (2 spawned gloo processes): evaluation counts every user exactly once, even when a
rank has no users or none of a popularity group; share-weighted losses give the global gradient."""

from __future__ import annotations

from datetime import timedelta

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from egra.data.datamodule import RecDataModule
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


def test_share_weights_make_the_ddp_gradient_the_global_batch_gradient():
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


class FirstUsers(RecDataModule):
    """Evaluates only the first ``n_eval`` users of each split (importable: ddp_spawn pickles it)."""

    def __init__(self, n_eval: int, **kw):
        super().__init__(**kw)
        self.n_eval = n_eval

    def eval_users(self, split: int) -> np.ndarray:
        return super().eval_users(split)[: self.n_eval]


def _test_single_and_ddp(cfg_factory, n_eval: int, group_of) -> tuple[dict, dict]:
    """``test`` metrics on one process and on 2 spawned gloo ranks (evaluation chunks of 1 user)."""
    cfg = cfg_factory(["model=lightgcn"])
    kw = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "_target_"}
    dm = FirstUsers(n_eval, **{**kw, "eval_batch_size": 1})
    dm.setup()
    L.seed_everything(0)
    module = build_module(cfg, dm, build_net(cfg.model, dm))
    module.item_groups = torch.as_tensor(group_of(dm), dtype=torch.long)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    single = _trainer(devices=1).test(module, datamodule=dm, verbose=False)[0]
    module.load_state_dict(state)
    # A collective that the ranks disagree on fails after the timeout instead of hanging.
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60))
    multi = _trainer(devices=2, strategy=strategy).test(module, datamodule=dm, verbose=False)[0]
    return single, multi


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty_rank", "rank_missing_a_group"])
def test_ddp_test_metrics_with_an_empty_rank_or_a_missing_popularity_group(cfg_factory, case):
    from egra.data.interactions import TEST

    if case == "empty_rank":
        # One test user: rank 1 scores nobody and has no key of its own to send.
        n_eval, group_of = 1, lambda dm: dm.data.item_train_counts() % 3
    else:
        # Four users, one per chunk: rank 0 scores users 0 and 2, rank 1 users 1 and 3. Group 1
        # holds exactly user 0's test items, so rank 1 has no user of group 1.
        def group_of(dm):
            groups = np.zeros(dm.data.n_items, dtype=np.int64)
            u, i = dm.data.pairs(TEST)
            groups[i[u == dm.eval_users(TEST)[0]]] = 1
            return groups

        n_eval = 4
    single, multi = _test_single_and_ddp(cfg_factory, n_eval, group_of)
    assert set(single) == set(multi)
    groups = {k.split("/")[1] for k in single if "popgroup" in k}
    assert groups == ({"popgroup0", "popgroup1"} if case == "rank_missing_a_group" else groups) and groups
    for key in single:
        assert multi[key] == pytest.approx(single[key], abs=1e-6), key
