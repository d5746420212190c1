"""Content-keyed artifact cache: pretrained embeddings and graphs.

An artifact is a directory ``<root>/<kind>/<key>/`` holding ``.npy`` files and a
``manifest.json`` written last. The key hashes what produced the artifact (dataset
fingerprint + the producing config), so identical inputs reuse it and a changed input
gets a new key. The manifest lists every file with its sha256; an artifact whose
manifest is missing, unreadable or does not match its files is treated as absent and
rebuilt, so a run killed mid-write can never leave something a later run would trust.
Arrays are loaded with ``allow_pickle=False``. An artifact is written into a hidden
temporary directory and renamed into place, so no reader ever sees half of one.

Several processes may want one artifact: parallel sweep jobs, and the ranks of a DDP job,
which all run the whole pipeline (see ``egra.pipeline.dist``). :meth:`ArtifactCache.get_or_build`
serves builds that run in one process: with a process group, rank 0 builds (under the file
lock, for other jobs) while the other ranks wait at a barrier and then read it; without
one, whoever takes the file lock first builds and the others reuse. A build that itself
runs a DDP fit (a backbone trained on every rank) goes through ``collective=True``: every
rank runs it, no lock is held across it (ranks joining the fit would wait on the lock
forever), and rank 0 alone writes. A rank that cannot see what rank 0 wrote stops with
:class:`NotSharedError`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egra.pipeline import dist
from egra.pipeline.io import atomic_write_bytes, write_json

log = logging.getLogger(__name__)
Builder = Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]]
MANIFEST = "manifest.json"


class NotSharedError(RuntimeError):
    """A rank cannot see an artifact rank 0 wrote: the artifact directory is not shared."""


def artifact_key(**parts: Any) -> str:
    """Stable 16-hex key of JSON-serialisable parts (dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]
    reused: bool

    def array(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", allow_pickle=False)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.array(name) for name in self.manifest["files"]}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def validate(path: Path, required: Sequence[str] = (), warn: bool = True) -> dict[str, Any] | None:
    """The manifest if the artifact at ``path`` is complete and intact, else None.

    Intact: every ``required`` file is listed, every listed file matches its sha256 and the
    shape the manifest records (metadata is checked against the arrays, never just trusted).
    What is wrong is logged as one warning line unless ``warn`` is false (a second look at
    an artifact already reported).
    """
    report = log.warning if warn else log.debug
    mpath = path / MANIFEST
    if not mpath.exists():
        return None
    try:
        manifest = json.loads(mpath.read_text())
        missing = [name for name in required if name not in manifest["files"]]
        if missing:
            report("artifact %s: manifest lists no %s", path, ", ".join(f"{m}.npy" for m in missing))
            return None
        for name, digest in manifest["files"].items():
            fpath = path / f"{name}.npy"
            if not fpath.exists() or _sha256(fpath) != digest:
                report("artifact %s: %s.npy is missing or does not match its manifest", path, name)
                return None
            shape = list(np.load(fpath, mmap_mode="r", allow_pickle=False).shape)
            if manifest["shapes"][name] != shape:
                report("artifact %s: %s.npy has shape %s, its manifest says otherwise", path, name, shape)
                return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        report("artifact %s: unreadable manifest (%s)", path, err)
        return None
    return manifest


class ArtifactCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get(self, kind: str, key: str, required: Sequence[str] = (), warn: bool = True) -> Artifact | None:
        path = self.path(kind, key)
        manifest = validate(path, required, warn)
        return Artifact(path, manifest, reused=True) if manifest is not None else None

    def put(self, kind: str, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Artifact:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{key}.tmp-"))
        files = {}
        for name, arr in arrays.items():
            _save_npy(tmp / f"{name}.npy", arr)
            files[name] = _sha256(tmp / f"{name}.npy")
        manifest = {
            "kind": kind,
            "key": key,
            "files": files,
            "shapes": {k: list(np.shape(v)) for k, v in arrays.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **dict(meta),
        }
        write_json(tmp / MANIFEST, manifest)  # written last: its presence means "complete"
        if path.exists():
            # Complete means holding every array this writer has: a copy that lost one is replaced.
            theirs = validate(path, required=tuple(arrays), warn=False)
            if theirs is not None:
                # Another writer finished first with the same key: same inputs, keep theirs.
                shutil.rmtree(tmp, ignore_errors=True)
                return Artifact(path, theirs, reused=False)
            shutil.rmtree(path)  # invalid leftovers of a killed run
        try:
            os.rename(tmp, path)
        except OSError:
            # A concurrent writer renamed its copy in between: keep theirs if it is complete.
            shutil.rmtree(tmp, ignore_errors=True)
            theirs = validate(path, required=tuple(arrays))
            if theirs is None:
                raise
            return Artifact(path, theirs, reused=False)
        return Artifact(path, manifest, reused=False)

    def _build_and_put(self, kind: str, key: str, build: Builder) -> Artifact:
        t0 = time.perf_counter()
        arrays, meta = build()
        art = self.put(kind, key, arrays, {**meta, "build_time_s": round(time.perf_counter() - t0, 3)})
        log.info("wrote %s artifact %s in %.1fs", kind, art.path, time.perf_counter() - t0)
        return art

    def _locked(self, kind: str, key: str, build: Builder, required: Sequence[str] = ()) -> Artifact:
        """Reuse or build under the artifact's file lock (one builder per key at a time).

        A complete artifact is reused without the lock: it is renamed into place whole and
        never changed afterwards, and a read-only (shared, published) cache has no room for
        a lock file.
        """
        found = self.get(kind, key, required)
        if found is not None:
            log.info("reusing %s artifact %s", kind, found.path)
            return found
        lock = self.root / kind / f".{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for %s artifact %s: another process is building it", kind, key)
                t_wait = time.perf_counter()
                fcntl.flock(handle, fcntl.LOCK_EX)
                log.info(
                    "lock on %s artifact %s acquired after %.1fs", kind, key, time.perf_counter() - t_wait
                )
            found = self.get(kind, key, required, warn=False)  # built meanwhile? (damage is reported)
            if found is not None:
                log.info("reusing %s artifact %s", kind, found.path)
                return found
            return self._build_and_put(kind, key, build)

    def _written_by_rank_zero(
        self, kind: str, key: str, art: Artifact | None, required: Sequence[str] = ()
    ) -> Artifact:
        """After the barrier that follows rank 0's write: rank 0's artifact on every rank."""
        if dist.rank() == 0:
            assert art is not None
            return art
        found = self.get(kind, key, required)
        if found is None:
            raise NotSharedError(
                f"rank {dist.rank()} cannot see the {kind} artifact {self.path(kind, key)} that rank 0 "
                f"wrote: paths.artifact_dir ({self.root}) must be on a filesystem every rank shares "
                "(multi-node: a shared network filesystem)"
            )
        return found

    def get_or_build(
        self,
        kind: str,
        key: str,
        build: Builder,
        required: Sequence[str] = (),
        *,
        collective: bool = False,
    ) -> Artifact:
        """The artifact ``kind/key`` (holding at least the ``required`` arrays), built by
        ``build() -> (arrays, meta)`` when absent or incomplete.

        ``collective=False``: ``build`` runs in one process. ``collective=True``: ``build``
        contains collectives every rank must join (a DDP fit), so every rank runs it and
        rank 0 writes the result. See the module docstring.
        """
        if collective:
            found = self.get(kind, key, required)
            if found is not None:
                log.info("reusing %s artifact %s", kind, found.path)
                return found
            # No lock here: ranks that join the fit later would wait on it forever.
            arrays, meta = build()
            dist.check_same(key, f"the key of the {kind} artifact")
            art = self.put(kind, key, arrays, meta) if dist.rank() == 0 else None
            if art is not None:
                log.info("wrote %s artifact %s", kind, art.path)
            dist.barrier()
            return self._written_by_rank_zero(kind, key, art, required)
        if not dist.initialized():
            return self._locked(kind, key, build, required)
        dist.check_same(key, f"the key of the {kind} artifact")
        art = self._locked(kind, key, build, required) if dist.rank() == 0 else None
        dist.barrier()  # the others wait here while rank 0 builds
        return self._written_by_rank_zero(kind, key, art, required)
