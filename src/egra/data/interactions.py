"""The in-memory dataset every other layer consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from egra.data.errors import DataError  # noqa: F401 - the readers import it from here

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


@dataclass(frozen=True, eq=False)
class Interactions:
    """User-item interactions of one dataset with their split label and item features.

    ``users``/``items``/``split`` are parallel int64/int64/int8 arrays (one entry per
    interaction row, after the cold-start-user filter). ``features`` maps a modality name
    (``"image"``, ``"text"``) to a float32 ``[n_items, d_m]`` array whose row i is item i.
    """

    name: str
    n_users: int
    n_items: int
    users: np.ndarray
    items: np.ndarray
    split: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    def pairs(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of one split, in file order."""
        m = self.split == split
        return self.users[m], self.items[m]

    def count(self, split: int) -> int:
        return int(np.count_nonzero(self.split == split))

    def item_train_counts(self) -> np.ndarray:
        """Number of train interactions of every item (int64 ``[n_items]``)."""
        _, items = self.pairs(TRAIN)
        return np.bincount(items, minlength=self.n_items).astype(np.int64)

    def fingerprint(self) -> str:
        """Content hash of everything a model can see: ids, splits, features (16 hex chars)."""
        h = hashlib.sha256()
        h.update(f"{self.n_users}:{self.n_items}".encode())
        for arr in (self.users, self.items, self.split):
            h.update(np.ascontiguousarray(arr).tobytes())
        for name in sorted(self.features):
            f = np.ascontiguousarray(self.features[name])
            h.update(name.encode())
            h.update(str(f.shape).encode())
            h.update(f.tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, int | str]:
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "train": self.count(TRAIN),
            "valid": self.count(VALID),
            "test": self.count(TEST),
            **{f"{k}_dim": int(v.shape[1]) for k, v in self.features.items()},
        }
