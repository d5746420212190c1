"""Synthetic generator: determinism, protocol invariants, planted structure, on-disk cache."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from egra.data.interactions import TEST, TRAIN, VALID
from egra.data.mmrec import load_mmrec
from egra.data.synthetic import (
    MANIFEST,
    PRESETS,
    SyntheticConfig,
    dataset_name,
    ensure_synthetic,
    generate,
    generate_full,
)


@pytest.fixture(scope="module")
def tiny():
    return generate_full("tiny", 0)


@pytest.fixture(scope="module")
def small():
    return generate_full("small", 1)


def test_presets_sizes(tiny):
    d = tiny.data
    assert 200 <= d.n_users <= 300 and 100 <= d.n_items <= 150
    assert d.features["image"].shape == (d.n_items, 32)
    assert d.features["text"].shape == (d.n_items, 16)
    baby = PRESETS["baby"]
    assert (baby.n_users, baby.n_items, baby.image_dim, baby.text_dim) == (19445, 7050, 4096, 384)


def test_small_preset_sizes(small):
    d = small.data
    assert (d.n_users, d.n_items) == (2500, 3000)
    assert 20_000 <= len(d.users) <= 32_000
    # sparse like MMRec's Amazon data: ~10 interactions per user, median item at the 5-core floor
    assert 8 <= len(d.users) / d.n_users <= 12
    assert np.median(np.bincount(d.items)) <= 6
    assert d.features["image"].shape[1] == 256 and d.features["text"].shape[1] == 64


def test_deterministic():
    a, b, c = generate("tiny", 3), generate("tiny", 3), generate("tiny", 4)
    for name in ("users", "items", "split"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for m in a.features:
        np.testing.assert_array_equal(a.features[m], b.features[m])
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert a.name == dataset_name("tiny", 3) == "synthetic-tiny-s3"


def test_dtypes(tiny):
    d = tiny.data
    assert d.users.dtype == np.int64 and d.items.dtype == np.int64 and d.split.dtype == np.int8
    for f in d.features.values():
        assert f.dtype == np.float32 and f.flags.c_contiguous and np.isfinite(f).all()
    assert tiny.ratings.min() >= 1 and tiny.ratings.max() <= 5
    assert tiny.ratings.dtype.kind == "i"


@pytest.mark.parametrize("which", ["tiny", "small"])
def test_protocol_invariants(which, request):
    full = request.getfixturevalue(which)
    d = full.data
    # ids contiguous
    assert np.array_equal(np.unique(d.users), np.arange(d.n_users))
    assert np.array_equal(np.unique(d.items), np.arange(d.n_items))
    # 5-core
    assert np.bincount(d.users).min() >= 5 and np.bincount(d.items).min() >= 5
    # no duplicate pairs
    assert len(np.unique(d.users * d.n_items + d.items)) == len(d.users)
    # every user has >= 3 train, >= 1 valid, >= 1 test
    per = np.stack([np.bincount(d.users[d.split == s], minlength=d.n_users) for s in (TRAIN, VALID, TEST)])
    assert per[0].min() >= 3 and per[1].min() >= 1 and per[2].min() >= 1
    # roughly 80/10/10
    frac = per.sum(1) / len(d.users)
    assert 0.7 < frac[0] < 0.85 and 0.07 < frac[1] < 0.15 and 0.07 < frac[2] < 0.15


def test_split_is_chronological_per_user(tiny):
    d, ts = tiny.data, tiny.timestamps
    order = np.lexsort((ts, d.users))
    # rows are already grouped by user in time order, timestamps strictly increasing
    np.testing.assert_array_equal(order, np.arange(len(ts)))
    same = d.users[1:] == d.users[:-1]
    assert (np.diff(ts)[same] > 0).all()
    # within a user the split label never goes back (train -> valid -> test)
    assert (np.diff(d.split.astype(int))[same] >= 0).all()
    last_train = pd.Series(ts[d.split == TRAIN]).groupby(d.users[d.split == TRAIN]).max()
    first_valid = pd.Series(ts[d.split == VALID]).groupby(d.users[d.split == VALID]).min()
    assert (last_train < first_valid).all()


def test_long_tail(small):
    counts = np.sort(np.bincount(small.data.items))[::-1]
    top = counts[: len(counts) // 5].sum() / counts.sum()
    assert top > 0.4  # 0.2 if uniform
    assert counts[0] > 10 * np.median(counts)


def _cooccurrence(d):
    """Item x item count of shared train users (dense; fine for the tiny/small presets)."""
    u, i = d.pairs(TRAIN)
    R = np.zeros((d.n_users, d.n_items), np.float32)
    R[u, i] = 1
    C = R.T @ R
    np.fill_diagonal(C, 0)
    return C


@pytest.mark.parametrize("modality", ["image", "text"])
def test_features_recover_copurchase_neighbours(small, modality):
    d = small.data
    C = _cooccurrence(d)
    X = d.features[modality] - d.features[modality].mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    k = 10
    nn = np.argpartition(-S, k, axis=1)[:, :k]
    knn_rate = (np.take_along_axis(C, nn, 1) > 0).mean()
    chance = (C > 0).sum() / (d.n_items * (d.n_items - 1))
    assert knn_rate > 2 * chance, (knn_rate, chance)
    # ... and co-purchases among feature neighbours are stronger than average
    assert np.take_along_axis(C, nn, 1).mean() > 2 * C.mean()


def test_features_encode_latent_factors_partly(small):
    # features are informative about the planted item factors but far from a copy of them
    d = small.data
    V = small.item_factors
    for m, (lo, hi) in (("image", PRESETS["small"].image_dims), ("text", PRESETS["small"].text_dims)):
        X = d.features[m].astype(np.float64)
        X -= X.mean(0)
        Y = V - V.mean(0)
        coef = np.linalg.solve(X.T @ X + 1e-3 * np.eye(X.shape[1]), X.T @ Y)  # least squares
        r2 = 1 - ((Y - X @ coef) ** 2).sum(0) / (Y**2).sum(0)
        seen = np.zeros(V.shape[1], bool)
        seen[lo:hi] = True
        assert r2[seen].mean() > 0.3, (m, r2)
        # dimensions a modality does not see are only predictable through the shared
        # category structure, never as well as the ones it sees
        assert r2[~seen].mean() < r2[seen].mean(), (m, r2)


def test_custom_config_and_bad_preset():
    cfg = dataclasses.replace(PRESETS["tiny"], name="mini", n_users=120, n_items=60, image_dim=8, text_dim=4)
    d = generate(cfg, 0)
    assert d.n_users == 120 and d.n_items == 60 and d.name == "synthetic-mini-s0"
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        generate("huge", 0)
    with pytest.raises(ValueError):
        SyntheticConfig(name="x", n_users=10, n_items=10, image_dim=2, text_dim=2, min_user=3)


def test_ensure_synthetic_round_trip_and_reuse(tmp_path):
    folder = ensure_synthetic(tmp_path, "tiny", 0)
    assert folder == tmp_path / "synthetic-tiny-s0"
    names = {p.name for p in folder.iterdir()}
    assert {"synthetic-tiny-s0.inter", "image_feat.npy", "text_feat.npy", MANIFEST} <= names
    header = (folder / "synthetic-tiny-s0.inter").read_text().splitlines()[0]
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0 and "version" in manifest

    data = generate("tiny", 0)
    back = load_mmrec(folder, require_features=True)
    assert back.fingerprint() == data.fingerprint() == manifest["fingerprint"]
    assert back.name == data.name
    assert back.summary() == data.summary() == manifest["counts"]

    # complete folder: reused untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert ensure_synthetic(tmp_path, "tiny", 0) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_ensure_synthetic_regenerates_after_version_bump(tmp_path, monkeypatch):
    import egra.data.synthetic as synthetic

    current = synthetic.GENERATOR_VERSION
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", current - 1)
    folder = ensure_synthetic(tmp_path, "tiny", 0)
    old = json.loads((folder / MANIFEST).read_text())
    assert old["version"] == current - 1
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", current)
    assert ensure_synthetic(tmp_path, "tiny", 0) == folder
    new = json.loads((folder / MANIFEST).read_text())
    assert new["version"] == current
    # the version seeds the random streams: same preset and seed, different data
    assert new["fingerprint"] == generate("tiny", 0).fingerprint() != old["fingerprint"]
    assert load_mmrec(folder, require_features=True).fingerprint() == new["fingerprint"]


@pytest.mark.parametrize("damage", ["no_manifest", "missing_file", "truncated", "other_version"])
def test_ensure_synthetic_regenerates_incomplete(tmp_path, damage):
    folder = ensure_synthetic(tmp_path, "tiny", 1)
    fingerprint = generate("tiny", 1).fingerprint()
    if damage == "no_manifest":
        (folder / MANIFEST).unlink()
    elif damage == "missing_file":
        (folder / "text_feat.npy").unlink()
    elif damage == "truncated":
        p = folder / "synthetic-tiny-s1.inter"
        p.write_bytes(p.read_bytes()[:100])
    else:
        m = json.loads((folder / MANIFEST).read_text())
        m["version"] = -1
        (folder / MANIFEST).write_text(json.dumps(m))
    assert ensure_synthetic(tmp_path, "tiny", 1) == folder
    assert load_mmrec(folder, require_features=True).fingerprint() == fingerprint
    assert json.loads((folder / MANIFEST).read_text())["fingerprint"] == fingerprint
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
