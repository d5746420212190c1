"""Small file helpers: atomic writes, JSON, run metadata."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

#: Per-user test metrics of a run (``users``, ``Recall@K``, ``NDCG@K``), beside its metrics.json.
PER_USER_FILE = "per_user_test.npz"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(fh)`` into a temporary file beside ``path``, then ``os.replace`` it there.

    The temporary file is in the same directory, so the rename never crosses a filesystem:
    ``path`` is the old file or the new one whole, never a part (a full disk or a kill
    mid-write leaves the old one). The temporary file is removed on any error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (team-shared caches).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same directory and ``os.replace``: never a half file."""
    atomic_write(path, lambda f: f.write(data))


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _git(*args: str, cwd: str | Path | None = None) -> str | None:
    """``git args`` output, stripped; None without git, outside a repository or on error."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision(cwd: str | Path | None = None) -> str | None:
    return _git("rev-parse", "HEAD", cwd=cwd) or None


def git_dirty(cwd: str | Path | None = None) -> bool | None:
    """Whether tracked files differ from ``HEAD`` (None when git cannot tell)."""
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return None if status is None else bool(status)
