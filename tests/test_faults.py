"""Faults a long run meets: a disk that fills during a checkpoint, a damaged checkpoint, a
read-only (published) cache, a flipped byte in the cached generated dataset."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from egra.data import DataError
from egra.data.synthetic import MANIFEST, ensure_synthetic, generate
from egra.pipeline.cache import ArtifactCache
from egra.pipeline.checkpoints import damage, newest_intact
from egra.pipeline.train import run
from tests.test_resume import COMPARED, Killed, _kill_overrides

BASE = ["model=bpr", "trainer.max_epochs=4"]


def _leftovers(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if p.name.endswith(".tmp"))


class DiskFull:
    """The checkpoint directory's filesystem, full once the checkpoints of training epoch
    ``from_epoch`` are written, with the system's temporary directory on another filesystem
    (a rename from there is a copy).

    Every write of checkpoint bytes into the directory from then on -- ``torch.save`` into an
    open file, or the copy a cross-filesystem move falls back to -- stops half-way with ENOSPC.
    The epoch is read from the checkpoint itself: checkpoints may be written in a thread
    (``AsyncCheckpointIO``), after training has moved on.
    """

    full = False
    from_epoch = 2
    ckpt_dir: Path | None = None

    @classmethod
    def inside(cls, path) -> bool:
        return cls.ckpt_dir is not None and Path(os.fsdecode(path)).resolve().parent == cls.ckpt_dir

    @classmethod
    def file_inside(cls, f) -> bool:
        try:
            return cls.inside(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False

    @classmethod
    def fills(cls, checkpoint) -> bool:
        cls.full = cls.full or (
            isinstance(checkpoint, dict) and checkpoint.get("epoch", -1) >= cls.from_epoch
        )
        return cls.full


def _no_space(f, payload: bytes) -> None:
    f.write(payload[: len(payload) // 2])  # half of it reached the disk
    f.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def disk_full(monkeypatch):
    real_save, real_rename, real_copyfile = torch.save, os.rename, shutil.copyfile

    def save(obj, f, *args, **kwargs):
        if DiskFull.file_inside(f) and DiskFull.fills(obj):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            _no_space(f, buf.getvalue())
        return real_save(obj, f, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if DiskFull.inside(dst) and not DiskFull.inside(src):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_rename(src, dst, *args, **kwargs)

    def copyfile(src, dst, *args, **kwargs):
        if DiskFull.inside(dst) and DiskFull.fills(torch.load(src, map_location="cpu", weights_only=True)):
            with open(dst, "wb") as f:
                _no_space(f, Path(src).read_bytes())
        return real_copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    yield DiskFull
    DiskFull.full, DiskFull.ckpt_dir = False, None


def test_disk_full_during_a_checkpoint_leaves_the_previous_one_and_the_run_resumes(cfg_factory, disk_full):
    """The disk fills with epoch 2's checkpoints: the run fails with ENOSPC, ``last.ckpt`` is
    still epoch 1's, whole, no partial file is left, and the resumed run (disk freed) ends
    where an uninterrupted one does."""
    full = run(cfg_factory(BASE, sub="full"))

    cfg = cfg_factory(BASE, sub="x")
    ckpt_dir = Path(cfg.paths.output_dir).resolve() / "checkpoints"
    disk_full.ckpt_dir = ckpt_dir
    with pytest.raises(OSError) as info:
        run(cfg)
    assert info.value.errno == errno.ENOSPC and disk_full.full
    assert damage(ckpt_dir / "last.ckpt") is None
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert _leftovers(ckpt_dir) == []

    disk_full.full, disk_full.ckpt_dir = False, None  # space freed
    resumed = run(cfg_factory([*BASE, "ckpt_path=last"], sub="x"))
    for key in COMPARED:
        assert resumed[key] == full[key], key
    assert resumed["status"] == "ok"


def test_damaged_last_checkpoint_falls_back_to_the_best_one(cfg_factory, caplog):
    """A truncated ``last.ckpt`` (a copy cut short): ``ckpt_path=last`` resumes from the newest
    intact checkpoint with one line saying so, not a PytorchStreamReader traceback."""
    with pytest.raises(Killed):
        run(cfg_factory(BASE + _kill_overrides(3), sub="r"))
    cfg = cfg_factory([*BASE, "ckpt_path=last"], sub="r")
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    best_epoch = torch.load(ckpt_dir / "best.ckpt", map_location="cpu", weights_only=True)["epoch"]
    assert damage(last) is not None and newest_intact(ckpt_dir)[0] == ckpt_dir / "best.ckpt"

    with caplog.at_level(logging.INFO, logger="egra.pipeline.fit"):
        resumed = run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "egra.pipeline.fit"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "last.ckpt is damaged" in warning and "resuming from best.ckpt instead" in warning
    assert "\n" not in warning and not any("Traceback" in line for line in lines)
    assert resumed["status"] == "ok" and resumed["epochs_run"] == 4 and best_epoch <= 2


def test_checkpoint_damage_is_told_by_crc_and_explicit_paths_are_checked(tmp_path, cfg_factory):
    good = tmp_path / "good.ckpt"
    torch.save({"epoch": 3, "global_step": 30, "state_dict": {"w": torch.randn(300, 8)}}, good)
    assert damage(good) is None
    flipped = bytearray(good.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # torch.load itself reads this without complaint
    (tmp_path / "flipped.ckpt").write_bytes(bytes(flipped))
    assert "CRC" in damage(tmp_path / "flipped.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert damage(tmp_path / "empty.ckpt") is not None
    torch.save({"weights": 1}, tmp_path / "other.ckpt")
    assert "not a Lightning checkpoint" in damage(tmp_path / "other.ckpt")

    # Only damaged ones: a fresh start, said once; none at all: nothing to say.
    d = tmp_path / "ckpts"
    d.mkdir()
    shutil.copy(tmp_path / "flipped.ckpt", d / "last.ckpt")
    found, note = newest_intact(d)
    assert found is None and "no other checkpoint is intact" in note
    assert newest_intact(tmp_path / "none") == (None, None)

    from egra.pipeline.fit import resolve_ckpt

    cfg = cfg_factory([f"ckpt_path={tmp_path / 'flipped.ckpt'}"])
    with pytest.raises(DataError, match="flipped.ckpt: member .* fails its CRC check"):
        resolve_ckpt(cfg, tmp_path)
    with pytest.raises(DataError, match="no such checkpoint file"):
        resolve_ckpt(cfg_factory([f"ckpt_path={tmp_path / 'nope.ckpt'}"]), tmp_path)


# --------------------------------------------------------------------------- read-only caches


@contextlib.contextmanager
def read_only(root: Path, monkeypatch):
    """``root`` as on a read-only mount. ``chmod`` does not stop root, so as root every call
    that would create, change or remove something under ``root`` fails with EROFS instead."""
    root = Path(root).resolve()
    if os.geteuid() != 0:
        paths = [root, *root.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            yield
        finally:
            for p in reversed(paths):
                p.chmod(stat.S_IMODE(modes[p]))
        return

    def under(path) -> bool:
        try:
            p = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return False
        return p == root or root in p.parents

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def wrap_open(real):
        def fake(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
                refuse(file)
            return real(file, mode, *args, **kwargs)

        return fake

    real_os_open = os.open

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def wrap_change(real):
        def fake(path, *args, **kwargs):
            if under(path):
                refuse(path)
            return real(path, *args, **kwargs)

        return fake

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", wrap_open(builtins.open))
        m.setattr(io, "open", wrap_open(io.open))
        m.setattr(os, "open", fake_os_open)
        for name in ("mkdir", "rename", "replace", "unlink", "remove", "rmdir", "chmod"):
            m.setattr(os, name, wrap_change(getattr(os, name)))
        yield


def test_a_complete_read_only_cache_is_reused(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path / "artifacts")
    built = cache.get_or_build("graphs", "k", lambda: ({"data": np.arange(4.0)}, {}))
    folder = ensure_synthetic(tmp_path / "data", "tiny", 0)

    def no_build():
        raise AssertionError("a complete artifact was rebuilt")

    with read_only(tmp_path, monkeypatch):
        again = cache.get_or_build("graphs", "k", no_build)
        assert again.reused and again.path == built.path
        np.testing.assert_array_equal(again.array("data"), np.arange(4.0))
        assert ensure_synthetic(tmp_path / "data", "tiny", 0) == folder
        # What is missing cannot be built on a read-only cache: the error says where.
        with pytest.raises(OSError):
            cache.get_or_build("graphs", "other", lambda: ({"data": np.ones(2)}, {}))
        with pytest.raises(DataError, match="not generated yet, and it cannot be regenerated there"):
            ensure_synthetic(tmp_path / "data", "tiny", 5)


@pytest.mark.slow
def test_a_run_reuses_a_read_only_artifact_cache_and_dataset(cfg_factory, monkeypatch):
    """MGCN's modality graphs and the generated dataset, published read-only: a second run of
    the same config (its own output directory) trains on them without writing there (a
    rebuild would have failed)."""
    base = ["model=mgcn", "trainer.max_epochs=1"]
    first = run(cfg_factory(base, sub="shared"))
    cfg = cfg_factory(base, sub="shared")
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).parent / "elsewhere" / "run")
    with (
        read_only(Path(cfg.paths.artifact_dir), monkeypatch),
        read_only(Path(cfg.paths.data_dir), monkeypatch),
    ):
        second = run(cfg)
    assert second["status"] == "ok" and second["test/Recall@20"] == first["test/Recall@20"]


# --------------------------------------------------------------------------- generated dataset


def test_a_flipped_byte_in_the_generated_dataset_is_named_and_regenerated(tmp_path, caplog):
    folder = ensure_synthetic(tmp_path, "tiny", 0)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())
    feat = folder / "image_feat.npy"
    raw = bytearray(feat.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size: only the checksum tells
    feat.write_bytes(bytes(raw))

    with caplog.at_level(logging.WARNING, logger="egra.data.synthetic"):
        assert ensure_synthetic(tmp_path, "tiny", 0) == folder
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"{folder}: image_feat.npy does not match its manifest (sha256); regenerating it"
    from egra.data.mmrec import load_mmrec

    assert load_mmrec(folder).fingerprint() == generate("tiny", 0).fingerprint() == manifest["fingerprint"]


def test_a_damaged_read_only_dataset_is_one_data_error(tmp_path, monkeypatch):
    folder = ensure_synthetic(tmp_path, "tiny", 0)
    text = folder / "text_feat.npy"
    raw = bytearray(text.read_bytes())
    raw[-3] ^= 0x10
    text.write_bytes(bytes(raw))
    with read_only(tmp_path, monkeypatch), pytest.raises(DataError) as info:
        ensure_synthetic(tmp_path, "tiny", 0)
    msg = str(info.value)
    assert "\n" not in msg and "text_feat.npy does not match its manifest (sha256)" in msg
    assert "cannot be regenerated there" in msg


def test_an_old_manifest_without_checksums_is_regenerated_quietly(tmp_path, caplog):
    folder = ensure_synthetic(tmp_path, "tiny", 0)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = {k: v["bytes"] for k, v in manifest["files"].items()}  # the format before
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="egra.data.synthetic"):
        ensure_synthetic(tmp_path, "tiny", 0)
    assert not caplog.records
    assert isinstance(json.loads((folder / MANIFEST).read_text())["files"]["image_feat.npy"], dict)
