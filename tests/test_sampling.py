"""BPR triple sampler and evaluation chunks."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from egra.data import sampling
from egra.data.sampling import BPRTriples, EvalChunks


def _toy(seed=0, n_users=50, n_items=40, per_user=8):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items - 1, per_user, replace=False) for _ in range(n_users)])
    return users, items, n_items


def _all(sampler):
    return torch.cat(list(sampler), dim=1).numpy()


def test_negatives_are_never_train_positives_and_cover_candidates():
    users, items, n_items = _toy()
    s = BPRTriples(users, items, n_items, batch_size=64, seed=3)
    train = set(zip(users.tolist(), items.tolist()))
    trip = _all(s)
    assert trip.shape == (3, len(users))
    assert not any((u, n) in train for u, n in zip(trip[0], trip[2]))
    # Every training row appears exactly once per epoch.
    got = sorted(zip(trip[0].tolist(), trip[1].tolist()))
    assert got == sorted(zip(users.tolist(), items.tolist()))
    # Negatives are drawn from items seen in training only (item n_items-1 never is).
    assert set(trip[2].tolist()) <= set(items.tolist())


def test_epochs_differ_and_are_reproducible():
    users, items, n_items = _toy()
    s = BPRTriples(users, items, n_items, batch_size=64, seed=3)
    s.set_epoch(0)
    e0 = _all(s)
    s.set_epoch(1)
    e1 = _all(s)
    s.set_epoch(0)
    assert np.array_equal(_all(s), e0)
    assert not np.array_equal(e0, e1)
    assert len(s) == -(-len(users) // 64)


def _rank_batches(world, **kw):
    users, items, n_items = _toy()
    out = []
    for rank in range(world):
        with mock.patch.object(sampling, "dist_info", return_value=(rank, world)):
            s = BPRTriples(users, items, n_items, seed=1, **kw)
            out.append(([b.numpy() for b in s], len(s)))
    return out


def test_ddp_shares_split_each_single_device_batch():
    users, items, n_items = _toy()  # 400 rows: the last global batch of 48 has 16 per rank
    single = [b.numpy() for b in BPRTriples(users, items, n_items, batch_size=64, seed=1)]
    ranks = _rank_batches(3, batch_size=64)
    for batches, n in ranks:
        # Same steps per epoch as one device, on every rank.
        assert n == len(batches) == len(single) == -(-len(users) // 64)
    for step, one in enumerate(single):
        shares = [batches[step] for batches, _ in ranks]
        assert [s.shape[1] for s in shares] == [len(x) for x in np.array_split(np.arange(one.shape[1]), 3)]
        # The ranks' shares of step s are exactly the rows of step s on one device.
        got = np.concatenate([s[:2] for s in shares], axis=1)
        assert np.array_equal(got, one[:2])


def test_ddp_per_rank_batches_scale_the_global_batch():
    users, _, _ = _toy()
    ranks = _rank_batches(2, batch_size=32, ddp_batch="per_rank")
    for batches, n in ranks:
        assert n == len(batches) == -(-len(users) // 64)
        assert all(b.shape[1] == 32 for b in batches[:-1])
    rows = [tuple(r) for batches, _ in ranks for b in batches for r in b[:2].T.tolist()]
    assert len(rows) == len(set(rows)) == len(users)  # every row once, no padding, none dropped


def test_ddp_last_step_may_leave_a_rank_empty_but_not_the_first():
    users, items, n_items = _toy()
    ranks = _rank_batches(3, batch_size=399)  # 400 rows: the second step has 1 row
    assert [batches[1].shape[1] for batches, _ in ranks] == [1, 0, 0]
    with mock.patch.object(sampling, "dist_info", return_value=(0, 4)):
        with pytest.raises(ValueError, match="each of 4 ranks"):
            list(BPRTriples(users, items, n_items, batch_size=3))
    with pytest.raises(ValueError, match="ddp_batch"):
        BPRTriples(users, items, n_items, batch_size=3, ddp_batch="scale")


def test_eval_chunks_cover_each_user_once_and_carry_masks():
    n_users, n_items = 10, 6
    truth = sp.csr_matrix(np.eye(n_users, n_items, dtype=np.float32))
    mask = sp.csr_matrix(np.eye(n_users, n_items, k=1, dtype=np.float32))
    users = np.array([3, 1, 4, 0, 9, 5, 2])
    seen = []
    for rank in range(3):
        with mock.patch.object(sampling, "dist_info", return_value=(rank, 3)):
            for batch in EvalChunks(users, truth, mask, chunk_size=2):
                u = batch["users"].numpy()
                seen.extend(u.tolist())
                # rows index positions within the chunk
                for r, i in zip(batch["truth_rows"].tolist(), batch["truth_items"].tolist()):
                    assert truth[u[r], i] == 1
                for r, i in zip(batch["mask_rows"].tolist(), batch["mask_items"].tolist()):
                    assert mask[u[r], i] == 1
    assert sorted(seen) == sorted(users.tolist())
