"""Deterministic synthetic multimodal recommendation datasets with planted structure.

Generative process (all randomness from ``numpy.random.Generator`` streams spawned from
one ``SeedSequence([seed, GENERATOR_VERSION])``):

1. Latent taste space of dimension ``K`` (16): ``C`` category centres ``c_k ~ N(0, I)``;
   item ``i`` has a category and factors ``v_i = c_cat(i) + item_spread * N(0, I)``;
   user ``u`` has preferences ``p_u = c_k + user_spread * N(0, I)`` around one category.
   With spreads above 1 categories are loose: most of the taste variance lies within a
   category (two buyers of "strollers" still want quite different strollers).
2. Item popularity is long-tailed: ``log pop_i = -zipf * log(rank_i) + Gaussian jitter``
   with a random rank order (independent of the taste factors).
3. User ``u`` buys ``n_u = 5 + floor(LogNormal)`` distinct items, drawn without
   replacement (Gumbel top-k) from ``softmax(p_u . v_i / (temperature sqrt(K)) +
   log pop_i)``; a temperature above 1 makes behaviour noisy (impulse buys, gifts).
   Items left with fewer than ``min_item`` buyers get extra buyers drawn
   from ``softmax`` over users of the same affinity, so 5-core filtering (still applied,
   iterated, before the split) keeps the preset's exact sizes.
4. Each user's purchases get a random order and strictly increasing timestamps; the
   last ~10% are test, the previous ~10% valid, the rest train (>= 1 / 1 / 3).
   Ratings (1-5) grow with the user-item affinity.
5. Features see only part of the taste space, through their own item-level noise:
   image = ReLU of a random projection of ``[v_i[image_dims] + noise, image nuisance]``
   plus per-dimension noise (non-negative, like CNN activations); text = tanh of a
   random projection of ``[v_i[text_dims] + noise, text nuisance]`` plus noise,
   L2-normalised (like sentence embeddings). Nuisance factors are item attributes
   unrelated to preference. The modalities share some latent dimensions, each has some
   of its own, and the last dimension(s) and popularity are learnable from IDs only.
   Values are rounded to a fixed binary grid so the files are bit-identical across
   BLAS builds.

Regime of the ``small`` preset (generator version 2). It imitates the Amazon data released
by MMRec rather than being easy: a catalogue larger than the user base (3000 items for 2500
users; ~10 interactions per user, ~9 per item, the median item at the 5-core floor, density
~0.35%), noisy choices (``temperature`` 1.3), weak popularity (``zipf`` 0.3: MostPop reaches
well under half of LightGCN's Recall@20) and loose categories (spreads 1.5), while the
features see 15 of the 16 taste dimensions with little noise. Per item the collaborative
signal is then scarce and noisy but the content is informative -- the situation in which
multimodal recommenders beat ID-only ones (MGCN > LightGCN on every seed,
``bench/results/small_comparison.md``). Version 1's ``small`` (1200 items, ~11 interactions
per user and ~24 per item, temperature 1, tight categories, features seeing 14 dimensions
through more noise) had a collaborative signal so strong and clean that an ID-only model
lost nothing by ignoring the features (LightGCN matched MGCN). ``tiny`` and ``baby`` keep
the version-1 knobs (their data still change with the version, which seeds the streams).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egra.data.interactions import TEST, TRAIN, VALID, DataError, Interactions
from egra.data.mmrec import feature_path, load_mmrec, plain_file_mode, save_mmrec

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "SyntheticConfig",
    "SyntheticDataset",
    "dataset_name",
    "ensure_synthetic",
    "generate",
    "generate_full",
    "load_synthetic",
]

GENERATOR_VERSION = 2
MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and knobs of one synthetic dataset (see the module docstring)."""

    name: str
    n_users: int
    n_items: int
    image_dim: int
    text_dim: int
    latent_dim: int = 16
    n_categories: int = 12
    #: spread of item/user factors around their category centre (centres have norm ~ 1 per dim)
    item_spread: float = 0.7
    user_spread: float = 0.9
    temperature: float = 1.0
    zipf: float = 0.6
    pop_jitter: float = 0.5
    #: per-user count = min_user + floor(LogNormal(mu, sigma)), capped
    min_user: int = 5
    extra_mu: float = 0.6
    extra_sigma: float = 1.1
    max_user: int = 120
    min_item: int = 5
    #: latent dimensions each modality sees; the rest are visible through IDs only
    image_dims: tuple[int, int] = (0, 10)
    text_dims: tuple[int, int] = (5, 14)
    #: each modality observes its latent dims through its own item-level noise
    latent_noise: float = 0.5
    nuisance_dim: int = 8
    nuisance_scale: float = 0.8
    image_noise: float = 0.5
    text_noise: float = 0.5
    val_frac: float = 0.1
    test_frac: float = 0.1
    #: co-purchase bundles the features cannot see: items fall into random groups of
    #: ``bundle_size`` (independent of taste and features) and each purchase brings one
    #: other member of its bundle along with probability ``bundle_prob``.
    bundle_size: int = 0
    bundle_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.min_user < 5:
            raise ValueError("min_user must be >= 5 (1 valid + 1 test + 3 train)")
        if self.n_users < 2 * self.min_item or self.n_items < 2 * self.min_user:
            raise ValueError(
                f"{self.name}: too few users/items for {self.min_user}/{self.min_item}-core data"
            )
        for lo, hi in (self.image_dims, self.text_dims):
            if not 0 <= lo < hi <= self.latent_dim:
                raise ValueError(f"modality dims {(lo, hi)} outside 0..{self.latent_dim}")


PRESETS: dict[str, SyntheticConfig] = {
    "tiny": SyntheticConfig(name="tiny", n_users=240, n_items=120, image_dim=32, text_dim=16, n_categories=6),
    # sparse, noisy behaviour and informative features (see "Regime" in the module docstring)
    "small": SyntheticConfig(
        name="small",
        n_users=2500,
        n_items=3000,
        image_dim=256,
        text_dim=64,
        item_spread=1.5,
        user_spread=1.5,
        temperature=1.3,
        zipf=0.3,
        extra_mu=0.7,
        image_dims=(0, 12),
        text_dims=(4, 15),
        latent_noise=0.2,
        nuisance_scale=0.4,
        image_noise=0.3,
        text_noise=0.3,
    ),
    # a different item-item structure: co-purchase bundles that features do not explain,
    # and features that see fewer taste dimensions through more noise than `small`'s
    "cobuy": SyntheticConfig(
        name="cobuy",
        n_users=2500,
        n_items=2000,
        image_dim=256,
        text_dim=64,
        item_spread=1.5,
        user_spread=1.5,
        temperature=1.3,
        zipf=0.3,
        extra_mu=0.5,
        image_dims=(0, 9),
        text_dims=(5, 13),
        latent_noise=0.6,
        nuisance_scale=0.8,
        image_noise=0.6,
        text_noise=0.6,
        bundle_size=4,
        bundle_prob=0.5,
    ),
    # the sizes of Amazon Baby as released by MMRec
    "baby": SyntheticConfig(
        name="baby", n_users=19445, n_items=7050, image_dim=4096, text_dim=384, n_categories=16, extra_mu=0.7
    ),
}


@dataclass(frozen=True, eq=False)
class SyntheticDataset:
    """A generated dataset plus the columns and ground truth ``Interactions`` lacks.

    ``ratings``/``timestamps`` are parallel to ``data.users``; the latent arrays are
    indexed by the final (re-indexed) user/item ids.
    """

    data: Interactions
    ratings: np.ndarray
    timestamps: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_category: np.ndarray
    item_log_popularity: np.ndarray


def dataset_name(preset: str | SyntheticConfig, seed: int) -> str:
    """``synthetic-<preset>-s<seed>``; a modified preset also gets a hash of its config."""
    cfg = _config(preset)
    tag = cfg.name
    if cfg.name in PRESETS and cfg != PRESETS[cfg.name]:
        blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()
        tag = f"{cfg.name}-{hashlib.sha256(blob).hexdigest()[:8]}"
    return f"synthetic-{tag}-s{int(seed)}"


def _config(preset: str | SyntheticConfig) -> SyntheticConfig:
    if isinstance(preset, SyntheticConfig):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}") from None


def generate(preset: str | SyntheticConfig, seed: int) -> Interactions:
    """The dataset of ``preset`` for ``seed`` (identical for identical arguments)."""
    return generate_full(preset, seed).data


def generate_full(preset: str | SyntheticConfig, seed: int) -> SyntheticDataset:
    """Like :func:`generate`, plus ratings, timestamps and the planted latent structure."""
    cfg = _config(preset)
    seed = int(seed)
    # A ninth stream for bundles: spawn(9)'s first eight are spawn(8)'s, so presets
    # without bundles keep their data.
    streams = np.random.SeedSequence([seed, GENERATOR_VERSION]).spawn(9)
    rng_lat, rng_pop, rng_cnt, rng_buy, rng_fill, rng_time, rng_img, rng_txt, rng_bundle = (
        np.random.default_rng(s) for s in streams
    )
    U, I, K = cfg.n_users, cfg.n_items, cfg.latent_dim

    # 1. latent taste space
    centres = rng_lat.standard_normal((cfg.n_categories, K))
    cat_weights = rng_lat.dirichlet(np.full(cfg.n_categories, 2.0))
    item_cat = rng_lat.choice(cfg.n_categories, size=I, p=cat_weights)
    V = centres[item_cat] + cfg.item_spread * rng_lat.standard_normal((I, K))
    user_cat = rng_lat.choice(cfg.n_categories, size=U, p=cat_weights)
    P = centres[user_cat] + cfg.user_spread * rng_lat.standard_normal((U, K))
    scale = 1.0 / (cfg.temperature * np.sqrt(K))

    # 2. long-tailed popularity
    rank = rng_pop.permutation(I) + 1
    log_pop = -cfg.zipf * np.log(rank) + cfg.pop_jitter * rng_pop.standard_normal(I)
    log_pop -= log_pop.max()

    # 3. purchases
    extra = np.floor(rng_cnt.lognormal(cfg.extra_mu, cfg.extra_sigma, size=U)).astype(np.int64)
    n_u = np.minimum(cfg.min_user + extra, min(cfg.max_user, I))
    users, items = _sample_purchases(P, V, log_pop, n_u, scale, rng_buy)
    if cfg.bundle_size > 1 and cfg.bundle_prob > 0:
        users, items = _add_bundle_purchases(users, items, I, cfg, rng_bundle)
    users, items = _fill_items(P, V, users, items, cfg.min_item, scale, rng_fill)

    # 4. time order, ratings
    order = np.lexsort((rng_time.random(len(users)), users))
    users, items = users[order], items[order]
    affinity = np.einsum("nk,nk->n", P[users], V[items]) * scale
    ratings = _ratings(affinity, rng_time)
    timestamps = _timestamps(users, U, rng_time)

    # 5-core (iterated), contiguous re-indexing, chronological split
    keep = _k_core(users, items, U, I, cfg.min_user, cfg.min_item)
    users, items, ratings, timestamps = users[keep], items[keep], ratings[keep], timestamps[keep]
    kept_users, users = np.unique(users, return_inverse=True)
    kept_items, items = np.unique(items, return_inverse=True)
    split = _chronological_split(users, cfg.val_frac, cfg.test_frac)

    # 6. features for the kept items
    Vk = V[kept_items]
    image = _image_features(Vk, cfg, rng_img)
    text = _text_features(Vk, cfg, rng_txt)

    data = Interactions(
        name=dataset_name(cfg, seed),
        n_users=len(kept_users),
        n_items=len(kept_items),
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        split=split,
        features={"image": image, "text": text},
        source=f"synthetic:{cfg.name}:seed={seed}:v{GENERATOR_VERSION}",
    )
    return SyntheticDataset(
        data=data,
        ratings=ratings,
        timestamps=timestamps,
        user_factors=P[kept_users],
        item_factors=Vk,
        item_category=item_cat[kept_items],
        item_log_popularity=log_pop[kept_items],
    )


def _gumbel_topk(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A without-replacement sample of ``k`` indices per row from ``softmax(logits)``.

    Gumbel top-k in its exponential-race form: the ``k`` smallest ``log(E) - logits``,
    ``E ~ Exp(1)``, returned in sampling order. Keys are float64 so that last-bit
    differences between machines cannot change the choice in practice.
    """
    e = rng.standard_exponential(size=logits.shape, dtype=np.float32).astype(np.float64)
    keys = np.log(np.maximum(e, 1e-30, out=e), out=e)  # float32 draws can be exactly 0
    keys -= logits
    top = np.argpartition(keys, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _sample_purchases(P, V, log_pop, n_u, scale, rng, chunk: int = 2048):
    users, items = [], []
    for start in range(0, len(P), chunk):
        stop = min(start + chunk, len(P))
        logits = (P[start:stop] @ V.T) * scale + log_pop
        counts = n_u[start:stop]
        picked = _gumbel_topk(logits, int(counts.max()), rng)
        mask = np.arange(picked.shape[1]) < counts[:, None]
        users.append(np.repeat(np.arange(start, stop), counts))
        items.append(picked[mask])
    return np.concatenate(users), np.concatenate(items)


def _add_bundle_purchases(users, items, n_items, cfg: SyntheticConfig, rng):
    """With probability ``bundle_prob`` a purchase brings one other member of its bundle."""
    perm = rng.permutation(n_items)  # bundle b = perm[b*size : (b+1)*size]
    slot = np.empty(n_items, dtype=np.int64)
    slot[perm] = np.arange(n_items)
    size = cfg.bundle_size
    start = (slot[items] // size) * size
    width = np.minimum(size, n_items - start)
    take = (rng.random(len(items)) < cfg.bundle_prob) & (width > 1)
    shift = rng.integers(1, np.maximum(width, 2))  # another member, uniformly
    partner = perm[start + (slot[items] - start + shift) % width]
    u = np.concatenate([users, users[take]])
    i = np.concatenate([items, partner[take]])
    _, first = np.unique(u * n_items + i, return_index=True)  # repeat purchases count once
    first.sort()
    return u[first], i[first]


def _fill_items(P, V, users, items, min_item, scale, rng, chunk: int = 512):
    """Give every item at least ``min_item`` distinct buyers, drawn by taste."""
    counts = np.bincount(items, minlength=len(V))
    short = np.flatnonzero(counts < min_item)
    new_u, new_i = [users], [items]
    for start in range(0, len(short), chunk):
        block = short[start : start + chunk]
        logits = (V[block] @ P.T) * scale  # [block, U]
        row_of = np.full(len(V), -1, dtype=np.int64)
        row_of[block] = np.arange(len(block))
        have = row_of[items] >= 0
        logits[row_of[items[have]], users[have]] = -1e300  # no repeat purchases
        need = min_item - counts[block]
        picked = _gumbel_topk(logits, int(need.max()), rng)
        mask = np.arange(picked.shape[1]) < need[:, None]
        new_u.append(picked[mask])
        new_i.append(np.repeat(block, need))
    return np.concatenate(new_u), np.concatenate(new_i)


def _ratings(affinity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    z = (affinity - affinity.mean()) / (affinity.std() + 1e-12)
    r = np.rint(4.0 + 0.8 * z + 0.7 * rng.standard_normal(len(z)))
    return np.clip(r, 1, 5).astype(np.int64)


def _timestamps(users: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing per user (rows are grouped by user, in time order)."""
    t0, t1 = 1_262_304_000, 1_388_534_400  # 2010-01-01 .. 2014-01-01
    start = rng.integers(t0, t1, size=n_users)
    gaps = 1 + np.floor(rng.exponential(20 * 86_400, size=len(users))).astype(np.int64)
    first = np.r_[True, users[1:] != users[:-1]]
    gaps[first] = 0
    csum = np.cumsum(gaps)
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))
    return start[users] + csum - csum[group_start]


def _k_core(users, items, n_users, n_items, min_user, min_item) -> np.ndarray:
    keep = np.ones(len(users), dtype=bool)
    while True:
        cu = np.bincount(users[keep], minlength=n_users)
        ci = np.bincount(items[keep], minlength=n_items)
        new = keep & (cu[users] >= min_user) & (ci[items] >= min_item)
        if new.sum() == keep.sum():
            return keep
        keep = new


def _chronological_split(users: np.ndarray, val_frac: float, test_frac: float) -> np.ndarray:
    """Rows grouped by user in time order: last ~test_frac test, previous ~val_frac valid."""
    n = np.bincount(users)
    n_test = np.maximum(1, np.floor(test_frac * n + 0.5)).astype(np.int64)
    n_val = np.maximum(1, np.floor(val_frac * n + 0.5)).astype(np.int64)
    starts = np.r_[0, np.cumsum(n)[:-1]]
    pos = np.arange(len(users)) - starts[users]
    from_end = n[users] - pos  # 1 for the last row of a user
    split = np.full(len(users), TRAIN, dtype=np.int8)
    split[from_end <= n_test[users] + n_val[users]] = VALID
    split[from_end <= n_test[users]] = TEST
    return split


def _quantize(x: np.ndarray, bits: int) -> np.ndarray:
    step = 2.0**-bits
    return (np.rint(x / step) * step).astype(np.float32)


def _image_features(V: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    lo, hi = cfg.image_dims
    n = len(V)
    seen = V[:, lo:hi] + cfg.latent_noise * rng.standard_normal((n, hi - lo))
    nuisance = cfg.nuisance_scale * rng.standard_normal((n, cfg.nuisance_dim))
    h = np.concatenate([seen, nuisance], axis=1)
    W = rng.standard_normal((h.shape[1], cfg.image_dim)) / np.sqrt(h.shape[1])
    b = 0.3 * rng.standard_normal(cfg.image_dim)
    noise = cfg.image_noise * rng.standard_normal((n, cfg.image_dim), dtype=np.float32)
    x = np.maximum(h @ W + b + noise, 0.0)
    return _quantize(x, 12)


def _text_features(V: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    lo, hi = cfg.text_dims
    n = len(V)
    seen = V[:, lo:hi] + cfg.latent_noise * rng.standard_normal((n, hi - lo))
    nuisance = cfg.nuisance_scale * rng.standard_normal((n, cfg.nuisance_dim))
    h = np.concatenate([seen, nuisance], axis=1)
    W = rng.standard_normal((h.shape[1], cfg.text_dim)) / np.sqrt(h.shape[1])
    noise = cfg.text_noise * rng.standard_normal((n, cfg.text_dim))
    x = np.tanh(0.7 * (h @ W) + noise)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return _quantize(x, 16)


# --------------------------------------------------------------------------- on disk


def _manifest_expect(cfg: SyntheticConfig, seed: int) -> dict:
    return {
        "generator": "egra.data.synthetic",
        "version": GENERATOR_VERSION,
        "preset": cfg.name,
        "seed": int(seed),
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
    }


# Why a folder is regenerated without a warning: nothing in it was damaged.
_NEW, _UNFINISHED = "not generated yet", "no manifest (an unfinished write)"
_OTHER, _OLD = "written by another generator version or preset", "manifest from before checksums"
_EXPECTED = (_NEW, _UNFINISHED, _OTHER, _OLD)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _damage(folder: Path, expect: dict) -> str | None:
    """Why ``folder`` is not a complete copy of the dataset ``expect`` describes, or None.

    Complete: the manifest (written last) matches preset, seed and generator version, and
    every file it lists has its recorded size and sha256 -- a flipped byte is caught like
    in every other cached artifact, not passed on as a different dataset.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return _NEW if not folder.exists() else _UNFINISHED
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({type(e).__name__})"
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in expect.items()):
        return _OTHER
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for fname, entry in files.items():
        if not isinstance(entry, dict):
            return _OLD
        p = folder / fname
        try:
            if p.stat().st_size != entry.get("bytes"):
                return f"{fname} has another size than its manifest records"
            if _sha256(p) != entry.get("sha256"):
                return f"{fname} does not match its manifest (sha256)"
        except OSError as e:
            return f"{fname} is unreadable ({_one_line(e)})"
    return None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


@contextlib.contextmanager
def _folder_lock(folder: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: rely on atomic writes only
        yield
        return
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_synthetic(root_dir: str | os.PathLike, preset: str | SyntheticConfig, seed: int) -> Path:
    """Materialise ``<root_dir>/synthetic-<preset>-s<seed>/`` in MMRec format; return it.

    An existing folder is reused when its manifest (written last) matches the preset,
    seed and generator version and all listed files have their recorded sizes and
    sha256; otherwise the dataset is generated and written again (a damaged file is named
    in one warning line). Reuse takes no lock, so a complete read-only copy serves too; a
    damaged one that cannot be rewritten is a :class:`DataError`. ``load_mmrec(path)`` then
    returns the same arrays as ``generate(preset, seed)``.
    """
    cfg = _config(preset)
    folder = Path(root_dir) / dataset_name(cfg, seed)
    expect = _manifest_expect(cfg, seed)
    why = _damage(folder, expect)
    if why is None:
        return folder  # reading needs no lock: a read-only (published) copy is reusable
    if why not in _EXPECTED:
        log.warning("%s: %s; regenerating it", folder, why)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder):
            if _damage(folder, expect) is None:  # another process finished it meanwhile
                return folder
            _write(folder, cfg, seed, expect)
    except OSError as e:
        raise DataError(f"{folder}: {why}, and it cannot be regenerated there: {_one_line(e)}") from e
    return folder


def _write(folder: Path, cfg: SyntheticConfig, seed: int, expect: dict) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / MANIFEST).unlink()
    full = generate_full(cfg, seed)
    data = full.data
    ipath = save_mmrec(data, folder, ratings=full.ratings, timestamps=full.timestamps)
    fpaths = [feature_path(folder, m) for m in data.features]
    manifest = {
        **expect,
        "name": data.name,
        "fingerprint": data.fingerprint(),
        "counts": data.summary(),
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in [ipath, *fpaths]},
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, plain_file_mode())
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_synthetic(
    root_dir: str | os.PathLike, preset: str | SyntheticConfig, seed: int, **kwargs
) -> Interactions:
    """``load_mmrec(ensure_synthetic(root_dir, preset, seed), **kwargs)``."""
    return load_mmrec(ensure_synthetic(root_dir, preset, seed), **kwargs)
