"""LightningDataModule: MMRec-format or generated data -> BPR triples and ranking chunks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import scipy.sparse as sp
from torch.utils.data import DataLoader

from egra.data.interactions import TEST, TRAIN, VALID, Interactions
from egra.data.sampling import DDP_BATCH_MODES, BPRTriples, EvalChunks, PassThrough

# Score matrices of one evaluation chunk are capped at this many entries (~256 MiB in float32).
MAX_CHUNK_SCORES = 1 << 26


class RecDataModule(L.LightningDataModule):
    """Serves one dataset to a recommender.

    ``source="synthetic"`` generates ``preset`` with ``seed`` into ``root`` (once);
    ``source="mmrec"`` reads ``root/<basename(root)>.inter`` and the feature files beside it.
    ``mask_valid_at_test`` additionally masks validation items at test time (MMRec does not).
    ``ddp_batch`` says what ``batch_size`` means under DDP (:data:`egra.data.sampling.DDP_BATCH_MODES`).
    """

    def __init__(
        self,
        source: str = "synthetic",
        root: str | Path = "data/synthetic",
        preset: str = "small",
        seed: int = 0,
        modalities: tuple[str, ...] | list[str] = ("image", "text"),
        require_features: bool = False,
        batch_size: int = 2048,
        eval_batch_size: int = 4096,
        mask_valid_at_test: bool = False,
        filter_cold_users: bool = True,
        ddp_batch: str = "global",
    ):
        super().__init__()
        if source not in ("synthetic", "mmrec"):
            raise ValueError(f"data.source must be 'synthetic' or 'mmrec', got {source!r}")
        self.source = source
        self.root = Path(root)
        self.preset = preset
        self.seed = int(seed)
        self.modalities = tuple(modalities)
        self.require_features = require_features
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.mask_valid_at_test = mask_valid_at_test
        self.filter_cold_users = filter_cold_users
        if ddp_batch not in DDP_BATCH_MODES:
            raise ValueError(f"data.ddp_batch must be one of {DDP_BATCH_MODES}, got {ddp_batch!r}")
        self.ddp_batch = ddp_batch
        self.data: Interactions | None = None
        self.sampler_seed = self.seed

    # -- files -------------------------------------------------------------------------
    def prepare_data(self) -> Path:
        """Materialise the dataset folder (generation happens once) and return it."""
        if self.source == "synthetic":
            from egra.data.synthetic import ensure_synthetic

            return Path(ensure_synthetic(self.root, self.preset, self.seed))
        return self.root

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        from egra.data.mmrec import load_mmrec

        # prepare_data() is a cheap check once the files exist; calling it here makes
        # setup() usable without a Trainer.
        self.data = load_mmrec(
            self.prepare_data(),
            modalities=self.modalities,
            require_features=self.require_features,
            filter_cold_users=self.filter_cold_users,
        )

    # -- matrices ------------------------------------------------------------------------
    def _matrix(self, split: int) -> sp.csr_matrix:
        assert self.data is not None, "call setup() first"
        u, i = self.data.pairs(split)
        m = sp.csr_matrix(
            (np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.data.n_users, self.data.n_items)
        )
        m.sum_duplicates()
        return m

    def model_inputs(self) -> dict:
        """Keyword arguments every model constructor takes (see ``egra.models.Recommender``)."""
        assert self.data is not None, "call setup() first"
        u, i = self.data.pairs(TRAIN)
        return {
            "n_users": self.data.n_users,
            "n_items": self.data.n_items,
            "train_users": u,
            "train_items": i,
            "features": dict(self.data.features),
        }

    def eval_chunk_size(self) -> int:
        assert self.data is not None
        return max(1, min(self.eval_batch_size, MAX_CHUNK_SCORES // max(1, self.data.n_items)))

    # -- loaders -------------------------------------------------------------------------
    @staticmethod
    def _loader(sampler) -> DataLoader:
        return DataLoader(PassThrough(), sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        assert self.data is not None
        u, i = self.data.pairs(TRAIN)
        return self._loader(
            BPRTriples(
                u, i, self.data.n_items, self.batch_size, seed=self.sampler_seed, ddp_batch=self.ddp_batch
            )
        )

    def eval_users(self, split: int) -> np.ndarray:
        """Distinct users of ``split`` in order of first appearance (MMRec's order)."""
        assert self.data is not None
        users, _ = self.data.pairs(split)
        _, first = np.unique(users, return_index=True)
        return users[np.sort(first)]

    def _eval_loader(self, split: int) -> DataLoader:
        users = self.eval_users(split)
        mask = self._matrix(TRAIN)
        if split == TEST and self.mask_valid_at_test:
            mask = mask + self._matrix(VALID)
        return self._loader(EvalChunks(users, self._matrix(split), mask, self.eval_chunk_size()))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(VALID)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(TEST)
