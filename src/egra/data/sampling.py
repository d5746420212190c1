"""Epoch-wise BPR triples and full-ranking evaluation chunks, both vectorised.

Both are iterables of ready-made batches (a DataLoader with ``batch_size=None`` passes
them through). Randomness is a pure function of ``(seed, epoch, rank)``, so a resumed
run draws exactly the triples an uninterrupted one would, and DDP ranks draw different
negatives.

Under DDP training keeps the single-device protocol: ``batch_size`` is the *global* batch
(``ddp_batch="global"``, the default), every step's batch is cut from the same shared
permutation as on one device and each rank takes its share of it, so an epoch has the same
number of steps and uses every training triple once across ranks. ``ddp_batch="per_rank"``
gives each rank ``batch_size`` rows instead (global batch ``world x batch_size``, ``1/world``
of the steps). Evaluation shards users without padding; shards need not be equal.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


#: ``global``: ``batch_size`` is the global batch, split over ranks (the single-device
#: protocol); ``per_rank``: each rank takes ``batch_size`` rows (the global batch scales).
DDP_BATCH_MODES = ("global", "per_rank")


class BPRTriples(torch.utils.data.Sampler):
    """Yields ``[3, B]`` long tensors (users, positives, negatives), one epoch at a time.

    Negatives follow MMRec: uniform over the distinct items seen in training, redrawn
    while the item is in the user's training history (valid/test items may be drawn).
    Rejection is done for the whole batch at once, a few rounds at most in practice.
    """

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        n_items: int,
        batch_size: int,
        seed: int = 0,
        max_rounds: int = 100,
        ddp_batch: str = "global",
    ):
        if ddp_batch not in DDP_BATCH_MODES:
            raise ValueError(f"ddp_batch must be one of {DDP_BATCH_MODES}, got {ddp_batch!r}")
        self.users = np.asarray(users, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.max_rounds = max_rounds
        self.ddp_batch = ddp_batch
        self.epoch = 0
        self.candidates = np.unique(self.items)
        self.keys = np.unique(self.users * self.n_items + self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batch(self, world: int) -> int:
        """Rows consumed per optimiser step by all ranks together."""
        return self.batch_size * world if self.ddp_batch == "per_rank" else self.batch_size

    def __len__(self) -> int:
        _, world = dist_info()
        return -(-len(self.users) // self.global_batch(world))

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users * self.n_items + items
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == q

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        neg = self.candidates[rng.integers(len(self.candidates), size=len(users))]
        bad = np.flatnonzero(self.is_positive(users, neg))
        for _ in range(self.max_rounds):
            if bad.size == 0:
                break
            neg[bad] = self.candidates[rng.integers(len(self.candidates), size=bad.size)]
            bad = bad[self.is_positive(users[bad], neg[bad])]
        return neg

    def __iter__(self):
        rank, world = dist_info()
        rng = np.random.default_rng([self.seed, self.epoch, rank])
        # The permutation is shared by all ranks (same seed, epoch): step s uses the same
        # rows as step s on one device, cut into `world` near-equal contiguous shares. A
        # share can be empty only in a last step shorter than `world` rows; every rank
        # still yields it, since DDP needs the same number of steps everywhere.
        step = self.global_batch(world)
        if min(step, len(self.users)) < world:
            raise ValueError(
                f"data.batch_size={self.batch_size} with {len(self.users)} training rows cannot give "
                f"each of {world} ranks a row per step"
            )
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.users))
        for start in range(0, len(perm), step):
            idx = np.array_split(perm[start : start + step], world)[rank]
            u, p = self.users[idx], self.items[idx]
            yield torch.from_numpy(np.stack([u, p, self.sample_negatives(u, rng)]))


class EvalChunks(torch.utils.data.Sampler):
    """Yields dicts for full-ranking evaluation of ``users`` in chunks.

    Each chunk holds the users, the (row, item) pairs to mask (their train items, plus
    any extra mask such as valid items at test time) and the held-out (row, item) pairs.
    Rows are positions inside the chunk.
    """

    def __init__(
        self,
        users: np.ndarray,
        truth: sp.csr_matrix,
        mask: sp.csr_matrix,
        chunk_size: int,
    ):
        self.users = np.asarray(users, dtype=np.int64)
        self.truth = truth.tocsr()
        self.mask = mask.tocsr()
        self.chunk_size = max(1, int(chunk_size))

    def _chunks(self) -> list[np.ndarray]:
        rank, world = dist_info()
        # Small enough that every rank gets a chunk; a rank with no users gets one empty
        # chunk (Lightning needs at least one batch per rank).
        size = min(self.chunk_size, max(1, -(-len(self.users) // world)))
        chunks = [self.users[s : s + size] for s in range(0, len(self.users), size)]
        return chunks[rank::world] or [self.users[:0]]

    def __len__(self) -> int:
        return len(self._chunks())

    @staticmethod
    def _pairs(m: sp.csr_matrix, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        sub = m[users].tocoo()
        return torch.from_numpy(sub.row.astype(np.int64)), torch.from_numpy(sub.col.astype(np.int64))

    def __iter__(self):
        for users in self._chunks():
            mask_rows, mask_items = self._pairs(self.mask, users)
            truth_rows, truth_items = self._pairs(self.truth, users)
            yield {
                "users": torch.from_numpy(users),
                "mask_rows": mask_rows,
                "mask_items": mask_items,
                "truth_rows": truth_rows,
                "truth_items": truth_items,
            }


class PassThrough(torch.utils.data.Dataset):
    """Dataset whose "indices" are the batches themselves (pairs with ``batch_size=None``)."""

    def __getitem__(self, batch):
        return batch

    def __len__(self) -> int:  # pragma: no cover - the sampler defines the length
        return 0
