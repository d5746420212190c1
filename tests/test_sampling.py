"""BPR triple sampler and evaluation chunks."""

from __future__ import annotations

from unittest import mock

import numpy as np
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


def test_ranks_get_disjoint_equal_shards():
    users, items, n_items = _toy()
    shards = []
    for rank in range(2):
        with mock.patch.object(sampling, "dist_info", return_value=(rank, 2)):
            s = BPRTriples(users, items, n_items, batch_size=32, seed=1)
            shards.append(_all(s))
            n_batches = len(s)
    assert shards[0].shape == shards[1].shape
    assert n_batches == -(-shards[0].shape[1] // 32)
    rows0 = set(zip(shards[0][0].tolist(), shards[0][1].tolist()))
    rows1 = set(zip(shards[1][0].tolist(), shards[1][1].tolist()))
    assert not rows0 & rows1


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
