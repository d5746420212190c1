"""Content-keyed artifact cache: pretrained embeddings and graphs.

An artifact is a directory ``<root>/<kind>/<key>/`` holding ``.npy`` files and a
``manifest.json`` written last. The key hashes what produced the artifact (dataset
fingerprint + the producing config), so identical inputs reuse it and a changed input
gets a new key. The manifest lists every file with its sha256; an artifact whose
manifest is missing, unreadable or does not match its files is treated as absent and
rebuilt, so a run killed mid-write can never leave something a later run would trust.
Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egra.pipeline.io import atomic_write_bytes, write_json

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


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


def validate(path: Path, required: Sequence[str] = ()) -> dict[str, Any] | None:
    """The manifest if the artifact at ``path`` is complete and intact, else None.

    Intact: every ``required`` file is listed, every listed file matches its sha256 and the
    shape the manifest records (metadata is checked against the arrays, never just trusted).
    """
    mpath = path / MANIFEST
    if not mpath.exists():
        return None
    try:
        manifest = json.loads(mpath.read_text())
        missing = [name for name in required if name not in manifest["files"]]
        if missing:
            log.warning("artifact %s: manifest lists no %s", path, ", ".join(f"{m}.npy" for m in missing))
            return None
        for name, digest in manifest["files"].items():
            fpath = path / f"{name}.npy"
            if not fpath.exists() or _sha256(fpath) != digest:
                log.warning("artifact %s: %s.npy is missing or does not match its manifest", path, name)
                return None
            shape = list(np.load(fpath, mmap_mode="r", allow_pickle=False).shape)
            if manifest["shapes"][name] != shape:
                log.warning(
                    "artifact %s: %s.npy has shape %s, its manifest says otherwise", path, name, shape
                )
                return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("artifact %s: unreadable manifest (%s)", path, err)
        return None
    return manifest


class ArtifactCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get(self, kind: str, key: str, required: Sequence[str] = ()) -> Artifact | None:
        path = self.path(kind, key)
        manifest = validate(path, required)
        return Artifact(path, manifest, reused=True) if manifest is not None else None

    def put(self, kind: str, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Artifact:
        path = self.path(kind, key)
        if path.exists():
            shutil.rmtree(path)  # invalid leftovers: rebuild from scratch
        path.mkdir(parents=True)
        files = {}
        for name, arr in arrays.items():
            _save_npy(path / f"{name}.npy", arr)
            files[name] = _sha256(path / f"{name}.npy")
        manifest = {
            "kind": kind,
            "key": key,
            "files": files,
            "shapes": {k: list(np.shape(v)) for k, v in arrays.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **dict(meta),
        }
        write_json(path / MANIFEST, manifest)  # written last: its presence means "complete"
        return Artifact(path, manifest, reused=False)

    def get_or_build(
        self,
        kind: str,
        key: str,
        build: Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]],
        required: Sequence[str] = (),
    ) -> Artifact:
        """The artifact ``kind/key`` (holding at least the ``required`` arrays), built if absent."""
        lock = self.root / kind / f".{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        # One builder at a time (DDP ranks, parallel sweep jobs); the others then reuse it.
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
            found = self.get(kind, key, required)
            if found is not None:
                log.info("reusing %s artifact %s", kind, found.path)
                return found
            t0 = time.perf_counter()
            arrays, meta = build()
            art = self.put(kind, key, arrays, {**meta, "build_time_s": round(time.perf_counter() - t0, 3)})
            log.info("wrote %s artifact %s in %.1fs", kind, art.path, time.perf_counter() - t0)
            return art
