"""Which NVIDIA GPUs a compiled CUDA library has kernels for, read from the library itself.

A CUDA library carries machine code (SASS) per GPU architecture and, optionally, PTX: code
the driver compiles at load time for the GPU it finds. SASS built for ``sm_XY`` runs on a GPU
of compute capability ``X.Z`` with ``Z >= Y`` (same major); PTX for ``compute_XY`` runs on any
GPU of capability ``>= X.Y``. A GPU with neither has no kernel image. For FAISS that is not
a Python exception: its first kernel launch calls ``abort()`` and ends the process, so the
check has to happen before any FAISS GPU code runs.

The architectures come from the ``.nv_fatbin`` payloads embedded in the shared objects (one
entry per architecture and kind, each with a small header naming the kind and ``sm`` number),
or from the names torch reports (``torch.cuda.get_arch_list()``: ``sm_90``, ``sm_90a``,
``compute_90``).
"""

from __future__ import annotations

import functools
import mmap
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: First four bytes of a CUDA fat binary (little-endian 0xBA55ED50).
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, payload size
_ENTRY_HEAD = struct.Struct("<HHIQ")  # kind (1 PTX, 2 SASS), unknown, header size, payload size
_ENTRY_ARCH_OFFSET = 28  # uint32 sm number (e.g. 90) inside an entry header
_KIND_PTX, _KIND_SASS = 1, 2


@dataclass(frozen=True)
class KernelArchs:
    """Architectures a build has kernels for, as ``sm`` numbers (``80`` = ``sm_80``).

    ``exact`` holds architecture-specific SASS (``sm_90a``) that runs only on that exact
    compute capability.
    """

    sass: frozenset[int] = frozenset()
    ptx: frozenset[int] = frozenset()
    exact: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.sass or self.ptx or self.exact)

    def runs_on(self, capability: tuple[int, int]) -> bool:
        """True when a kernel image exists for a GPU of this ``(major, minor)`` capability."""
        major, minor = int(capability[0]), int(capability[1])
        cc = 10 * major + minor
        if cc in self.exact:
            return True
        if any(a // 10 == major and a % 10 <= minor for a in self.sass):
            return True
        return any(a <= cc for a in self.ptx)

    def describe(self) -> str:
        """``sm_70, sm_80, compute_90``-style list, or ``no GPU code``."""
        names = [f"sm_{a}" for a in sorted(self.sass)]
        names += [f"sm_{a}a" for a in sorted(self.exact)]
        names += [f"compute_{a}" for a in sorted(self.ptx)]
        return ", ".join(names) if names else "no GPU code"

    def __or__(self, other: KernelArchs) -> KernelArchs:
        return KernelArchs(self.sass | other.sass, self.ptx | other.ptx, self.exact | other.exact)


def capability_str(capability: tuple[int, int]) -> str:
    return f"{int(capability[0])}.{int(capability[1])}"


def parse_arch_list(names: Iterable[str]) -> KernelArchs:
    """Architectures from names such as torch's ``get_arch_list()``: ``sm_86``, ``sm_90a``,
    ``compute_90``; anything else is ignored."""
    sass, ptx, exact = set(), set(), set()
    for name in names:
        m = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", str(name).strip())
        if m is None:
            continue
        arch = int(m.group(2))
        if m.group(1) == "compute":
            ptx.add(arch)
        elif m.group(3):
            exact.add(arch)
        else:
            sass.add(arch)
    return KernelArchs(frozenset(sass), frozenset(ptx), frozenset(exact))


def fatbin_archs(data: bytes | mmap.mmap) -> KernelArchs:
    """The architectures of every fat binary found in ``data`` (a shared object's bytes)."""
    sass, ptx = set(), set()
    pos, end_of_data = 0, len(data)
    while True:
        pos = data.find(FATBIN_MAGIC, pos)
        if pos < 0:
            break
        if pos + _FATBIN_HEADER.size > end_of_data:
            break
        _, _, header_size, size = _FATBIN_HEADER.unpack_from(data, pos)
        end = pos + header_size + size
        if header_size != _FATBIN_HEADER.size or size == 0 or end > end_of_data:
            pos += len(FATBIN_MAGIC)  # the magic's bytes by chance, not a fat binary
            continue
        p = pos + header_size
        while p + _ENTRY_ARCH_OFFSET + 4 <= end:
            kind, _, entry_header, entry_size = _ENTRY_HEAD.unpack_from(data, p)
            if kind not in (_KIND_PTX, _KIND_SASS) or entry_header < _ENTRY_ARCH_OFFSET + 4:
                break
            (arch,) = struct.unpack_from("<I", data, p + _ENTRY_ARCH_OFFSET)
            (ptx if kind == _KIND_PTX else sass).add(int(arch))
            p += entry_header + entry_size
        pos = end
    return KernelArchs(frozenset(sass), frozenset(ptx))


@functools.lru_cache(maxsize=32)
def _file_archs(path: str, size: int, mtime_ns: int) -> KernelArchs:
    with open(path, "rb") as f:
        if size == 0:
            return KernelArchs()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return fatbin_archs(m)


def library_archs(paths: Iterable[str | Path]) -> KernelArchs:
    """Union of the architectures of these shared objects (each read once per process;
    about 0.2 s for FAISS's 200 MB library)."""
    out = KernelArchs()
    for path in paths:
        st = Path(path).stat()
        out = out | _file_archs(str(path), st.st_size, st.st_mtime_ns)
    return out


def loaded_libraries(name_part: str) -> list[Path]:
    """Shared objects mapped into this process whose file name contains ``name_part``
    (Linux ``/proc/self/maps``; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    found: dict[str, None] = {}
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            path = parts[5].strip()
            name = Path(path).name.lower()
            if name_part in name and ".so" in name:
                found[path] = None
    return [Path(p) for p in found if Path(p).exists()]
