"""Read, validate and write datasets in the MMRec folder format.

A dataset is a folder ``<root>/`` holding ``<name>.inter`` (tab-separated, header row,
columns ``userID``, ``itemID``, ``x_label`` and optionally ``rating``/``timestamp``) and
one ``<modality>_feat.npy`` float matrix per modality whose row ``i`` describes item
``i``. ``n_users``/``n_items`` are ``max(id) + 1`` over the whole file, as in MMRec.

Every problem with the files is reported as a one-line :class:`DataError` naming the
file, the line (1-based, the header is line 1) or column, and what was expected. Facts
that do not stop a run get one warning line each: a modality file that is absent while
another is there (which features are used), items with no train row (kept, as in MMRec).
Empty fields at the end of a row (trailing tabs) are ignored.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from egra.data.interactions import SPLIT_NAMES, TEST, TRAIN, VALID, DataError, Interactions

__all__ = [
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "feature_path",
    "inter_path",
    "load_mmrec",
    "save_mmrec",
]

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
OPTIONAL_COLUMNS = ("rating", "timestamp")
_ID_COLUMNS = ("userID", "itemID")
_MAX_ID = 2**40  # far beyond any real dataset; keeps id arithmetic in int64 safe
log = logging.getLogger(__name__)
_NPY_MAGIC = b"\x93NUMPY"
_MODALITY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


# --------------------------------------------------------------------------- paths


def inter_path(root: str | os.PathLike, name: str | None = None) -> Path:
    """``<root>/<name>.inter``; ``name`` defaults to the folder's basename."""
    root = Path(root)
    return root / f"{name or _default_name(root)}.inter"


def feature_path(root: str | os.PathLike, modality: str) -> Path:
    """``<root>/<modality>_feat.npy``."""
    return Path(root) / f"{modality}_feat.npy"


def _default_name(root: Path) -> str:
    name = root.resolve().name if root.name in ("", ".", "..") else root.name
    if not name:
        raise DataError(f"{root}: cannot derive a dataset name from this folder; pass name=")
    return name


def _one_line(text: object, limit: int = 200) -> str:
    """A message fragment that is guaranteed to be a single line of bounded length."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _show(value: object) -> str:
    """repr of a bad value from a file, short and on one line."""
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


# --------------------------------------------------------------------------- reader


def load_mmrec(
    root: str | os.PathLike,
    name: str | None = None,
    modalities: Iterable[str] = ("image", "text"),
    require_features: bool = False,
    filter_cold_users: bool = True,
) -> Interactions:
    """Load and validate one MMRec-format dataset folder.

    Args:
        root: the dataset folder.
        name: base name of the interactions file (``<name>.inter``); defaults to the
            folder's basename.
        modalities: feature files to look for (``<m>_feat.npy`` for each ``m``).
        require_features: if true, a missing feature file is an error; otherwise that
            modality is simply absent from ``features``.
        filter_cold_users: drop the valid/test rows of users without any train row
            (MMRec's ``filter_out_cod_start_users``); ids are not changed.

    Raises:
        DataError: with a one-line message naming the file and the problem.
    """
    root = Path(root)
    modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    for m in modalities:
        if not isinstance(m, str) or not _MODALITY_RE.match(m):
            raise DataError(f"{root}: invalid modality name {_show(m)}; expected letters, digits, '_' or '-'")
    kind = _kind(root)
    if kind != "dir":
        if kind == "missing":
            raise DataError(f"{root}: dataset folder does not exist (expected a folder holding <name>.inter)")
        if kind == "file":
            hint = f"; pass its folder {root.parent}" if root.suffix == ".inter" else ""
            raise DataError(f"{root}: expected a dataset folder, got a file{hint}")
        raise DataError(f"{root}: {kind}; expected a dataset folder holding <name>.inter")
    name = name or _default_name(root)
    path = inter_path(root, name)
    kind = _kind(path)
    if kind == "missing":
        raise DataError(
            f"{path}: interactions file not found; expected '{name}.inter' in {root}, "
            f"which holds: {_listing(root)}"
        )
    if kind != "file":
        kind = "is a directory, expected a file" if kind == "dir" else kind
        raise DataError(f"{path}: {kind}; expected the tab-separated interactions file")

    users, items, split = _read_inter(path)
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1

    features: dict[str, np.ndarray] = {}
    absent: list[str] = []
    for m in modalities:
        fpath = feature_path(root, m)
        kind = _kind(fpath)
        if kind == "missing":
            if require_features:
                raise DataError(
                    f"{fpath}: feature file for modality '{m}' not found (require_features=True); "
                    f"{root} holds: {_listing(root)}"
                )
            absent.append(m)
            continue
        if kind != "file":
            kind = "is a directory, expected a file" if kind == "dir" else kind
            raise DataError(f"{fpath}: {kind}; expected a .npy float array [{n_items}, d]")
        features[m] = _load_features(fpath, n_items)
    if absent and features:
        # Some modalities but not all: say which features a model gets. With none at all the
        # dataset is interactions-only, which ID models use as is (a model that needs
        # features is refused by the config checks).
        log.warning(
            "%s: no %s; item features: %s only",
            root,
            ", ".join(feature_path(".", m).name for m in absent),
            ", ".join(features),
        )

    if filter_cold_users:
        users, items, split = _filter_cold_users(path, users, items, split, n_users)
    _warn_items_without_train(path, items, split, n_items)

    return Interactions(
        name=name,
        n_users=n_users,
        n_items=n_items,
        users=users,
        items=items,
        split=split,
        features=features,
        source=str(path),
    )


def _kind(path: Path) -> str:
    """``"file"``, ``"dir"``, ``"missing"`` or why the path is neither (one line, no trailing period).

    Never opens the path: a FIFO named ``<name>.inter`` would block the reader forever.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return "missing"
    except PermissionError as e:
        return f"cannot be accessed ({_one_line(e.strerror or e)}: check the permissions of its folders)"
    except OSError as e:
        return f"cannot be accessed ({_one_line(e)})"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "is not a regular file (a pipe, socket or device)"


def _warn_items_without_train(path: Path, items: np.ndarray, split: np.ndarray, n_items: int) -> None:
    """One warning line for items that appear only in valid/test rows.

    MMRec keeps them (``n_items`` is ``max(id) + 1`` over the whole file and evaluation
    ranks every item): they stay, counted in the metrics. Their ID embeddings never receive
    a positive gradient, so only a model's features can rank them well.
    """
    in_train = np.zeros(n_items, dtype=bool)
    in_train[items[split == TRAIN]] = True
    held = ~in_train[items]
    if not held.any():
        return
    cold = np.unique(items[held])
    log.warning(
        "%s: %d item(s) appear only in valid/test rows (e.g. itemID %d); kept and ranked, as in "
        "MMRec: only features can score them",
        path,
        len(cold),
        int(cold[0]),
    )


def _listing(root: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError as e:
        return f"(cannot list: {_one_line(e)})"
    if not names:
        return "(nothing)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read_header(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {_one_line(e)}") from e
    # Up to the first line end, whichever convention (\n, \r\n or an old Mac's \r).
    first = re.split(rb"\r\n|\r|\n", head, maxsplit=1)[0]
    if not first.strip():
        what = "file is empty" if not head else "line 1 (header) is blank"
        raise DataError(f"{path}: {what}; expected a tab-separated header with {', '.join(REQUIRED_COLUMNS)}")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} line 1: header is not valid UTF-8 ({_one_line(e)}){_encoding_hint(first)}"
        ) from e
    cols = [c.strip() for c in text.split("\t")]
    while len(cols) > 1 and cols[-1] == "":
        cols.pop()  # trailing tabs: empty fields at the end of a row are ignored
    found = ", ".join(repr(c) for c in cols)
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise DataError(
            f"{path} line 1: missing required column {', '.join(repr(c) for c in missing)}; "
            f"header has {found} (tab-separated; required {', '.join(REQUIRED_COLUMNS)}){_header_hint(cols)}"
        )
    for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        if cols.count(c) > 1:
            raise DataError(f"{path} line 1: column {c!r} appears {cols.count(c)} times in the header")
    return cols


def _encoding_hint(first: bytes) -> str:
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "; the file looks UTF-16 encoded: save it as UTF-8"
    if first.startswith(b"\x1f\x8b"):
        return "; the file looks gzip-compressed: decompress it first"
    return ""


def _header_hint(cols: list[str]) -> str:
    if all(_is_number(c) for c in cols):
        return "; the file seems to have no header row"
    if len(cols) == 1 and "," in cols[0]:
        return "; the file seems comma-separated"
    lower = {c.lower(): c for c in cols}
    near = [
        f"{lower[r.lower()]!r} for {r!r}" for r in REQUIRED_COLUMNS if r not in cols and r.lower() in lower
    ]
    return f"; names are case-sensitive ({', '.join(near)})" if near else ""


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = _read_header(path)
    n_fields = len(cols)
    # rating/timestamp are optional and, as in MMRec, not used; all columns are still
    # parsed so that a row with too many fields is caught.
    use = list(REQUIRED_COLUMNS)
    dtypes = {cols.index(c): "int64" for c in use}

    def parse(nrows: int | None, width: int | None) -> pd.DataFrame:
        with warnings.catch_warnings():  # e.g. mixed-type optional columns: not our concern
            warnings.simplefilter("ignore")
            return pd.read_csv(
                path,
                sep="\t",
                header=None,
                names=list(range(width)) if width else None,
                skiprows=1,
                dtype=dtypes,
                engine="c",
                low_memory=False,
                quoting=csv.QUOTE_NONE,
                skip_blank_lines=False,
                encoding="utf-8",
                nrows=nrows,
            )

    try:
        frame = parse(None, None)
        if frame.shape[1] != n_fields or frame[n_fields - 1].isna().any():
            # Fields beyond the header (trailing tabs are fine, values are not) or a short
            # row (the parser pads it with NaN): the line-by-line pass tells which.
            raise _Recheck(f"{frame.shape[1]} columns for a {n_fields}-column header")
    except Exception as first_error:  # any pandas/parse failure: locate it precisely
        n_rows, width = _diagnose(path, cols, use, first_error)
        try:
            frame = parse(n_rows, max(width, n_fields))
        except Exception as e:  # pragma: no cover - diagnose should have found it
            raise DataError(f"{path}: cannot parse file: {_one_line(e)}") from e

    if len(frame) == 0:
        raise DataError(f"{path}: no data rows after the header; expected one row per interaction")
    frame = frame.iloc[:, :n_fields]
    frame.columns = cols
    users = frame["userID"].to_numpy(dtype=np.int64)
    items = frame["itemID"].to_numpy(dtype=np.int64)
    labels = frame["x_label"].to_numpy(dtype=np.int64)
    _validate_ids(path, users, items, labels)
    return np.ascontiguousarray(users), np.ascontiguousarray(items), labels.astype(np.int8)


class _Recheck(Exception):
    """The fast parse succeeded but the rows need the line-by-line pass."""


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the parser's line ends (str.splitlines knows more)


def _diagnose(path: Path, cols: list[str], use: list[str], error: Exception) -> tuple[int, int]:
    """Find the first bad line after the fast parse failed; raise a DataError for it.

    Returns the number of data rows (trailing blank lines are tolerated) and the most
    fields a row has (rows may end in empty fields) when every row is fine.
    """
    n_fields = len(cols)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            lines = _LINE_BREAK.split(fh.read())
    except UnicodeDecodeError as e:
        line_no = _line_of_offset(path, e.start)
        raise DataError(f"{path} line {line_no}: not valid UTF-8 text (byte offset {e.start})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {_one_line(e)}") from e

    body = lines[1:]
    n_rows = len(body)
    while n_rows and not body[n_rows - 1].strip():
        n_rows -= 1  # tolerate blank lines at the very end
    if n_rows == 0:
        raise DataError(f"{path}: no data rows after the header; expected one row per interaction")
    positions = {c: cols.index(c) for c in use}
    width = n_fields
    for k in range(n_rows):
        line_no = k + 2
        raw = body[k]
        if not raw.strip():
            raise DataError(f"{path} line {line_no}: blank line; expected {n_fields} tab-separated fields")
        fields = raw.split("\t")
        width = max(width, len(fields))
        if len(fields) > n_fields and not "".join(fields[n_fields:]).strip():
            fields = fields[:n_fields]  # trailing tabs
        if len(fields) != n_fields:
            extra = " (values after the last column)" if len(fields) > n_fields else ""
            raise DataError(
                f"{path} line {line_no}: expected {n_fields} tab-separated fields "
                f"({', '.join(cols)}), found {len(fields)}{extra}"
            )
        for c, j in positions.items():
            if not _is_integer(fields[j].strip()):
                raise DataError(
                    f"{path} line {line_no}, column {c}: expected an integer, got {_show(fields[j])}"
                )
    if n_rows == len(body) and width == n_fields and not isinstance(error, _Recheck):
        raise DataError(f"{path}: cannot parse file: {_one_line(error)}") from error
    return n_rows, width


def _is_integer(s: str) -> bool:
    """Whether the parser accepts ``s`` as an int64 (``"7"``, ``"7.0"``; not ``"7.5"``)."""
    try:
        v = int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            return False
        if not (np.isfinite(f) and f.is_integer()):
            return False
        v = int(f)
    return -(2**63) <= v < 2**63


def _line_of_offset(path: Path, offset: int) -> int:
    with open(path, "rb") as fh:
        return fh.read(offset).count(b"\n") + 1


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _validate_ids(path: Path, users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> None:
    for col, arr in (("userID", users), ("itemID", items)):
        bad = arr < 0
        if bad.any():
            k = _first(bad)
            raise DataError(f"{path} line {k + 2}, column {col}: expected an id >= 0, got {arr[k]}")
        if arr.max() >= _MAX_ID:
            k = _first(arr >= _MAX_ID)
            raise DataError(
                f"{path} line {k + 2}, column {col}: expected an id < 2**40 (ids are 0..N-1), got {arr[k]}"
            )
    bad = (labels < 0) | (labels > 2)
    if bad.any():
        k = _first(bad)
        raise DataError(
            f"{path} line {k + 2}, column x_label: expected 0 (train), 1 (valid) or 2 (test), got {labels[k]}"
        )
    for col, arr, what in (("userID", users, "user"), ("itemID", items, "item")):
        uniq = np.unique(arr)
        gap = uniq != np.arange(len(uniq))
        if gap.any():
            k = _first(gap)
            missing = k  # uniq[:k] == 0..k-1 and uniq[k] > k
            raise DataError(
                f"{path}, column {col}: {what} ids must be contiguous 0..N-1 "
                f"(N = max+1 = {int(uniq[-1]) + 1}): id {missing} never appears"
            )
    counts = np.bincount(labels, minlength=3)
    for s in (TRAIN, VALID, TEST):
        if counts[s] == 0:
            raise DataError(
                f"{path}, column x_label: the {SPLIT_NAMES[s]} split is empty (no row with x_label={s})"
            )
    n_items = int(items.max()) + 1
    keys = users * n_items + items
    _, first_idx, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if len(first_idx) != len(keys):
        is_first = np.zeros(len(keys), dtype=bool)
        is_first[first_idx] = True
        dup = np.flatnonzero(~is_first)
        k = int(dup[0])
        j = int(first_idx[inverse[k]])
        raise DataError(
            f"{path} lines {j + 2} and {k + 2}: duplicate (userID, itemID) pair ({users[k]}, {items[k]}); "
            f"each pair may appear once ({len(dup)} duplicate rows in total)"
        )


def _filter_cold_users(
    path: Path, users: np.ndarray, items: np.ndarray, split: np.ndarray, n_users: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[split == TRAIN]] = True
    keep = has_train[users]
    if keep.all():
        return users, items, split
    cold = np.unique(users[~keep])
    log.info(
        "%s: dropped %d valid/test rows of %d users without any train row (e.g. userID %d; filter_cold_users)",
        path,
        int((~keep).sum()),
        len(cold),
        int(cold[0]),
    )
    users, items, split = users[keep], items[keep], split[keep]
    for s in (VALID, TEST):
        if not np.any(split == s):
            raise DataError(
                f"{path}: the {SPLIT_NAMES[s]} split is empty after dropping the rows of users "
                "without any train row (filter_cold_users=True)"
            )
    return users, items, split


def _load_features(path: Path, n_items: int) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DataError(f"{path}: cannot read feature file: {_one_line(e)}") from e
    if magic != _NPY_MAGIC:
        what = "file is empty" if not magic else "not a .npy file (bad magic bytes)"
        if magic.startswith(b"PK"):
            what = "is a zip archive (np.savez?), not a .npy file"
        raise DataError(f"{path}: {what}; expected a float array [{n_items}, d] saved with np.save")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(
                f"{path}: holds Python objects (an object/pickled array); expected a float array "
                f"[{n_items}, d] (refusing to unpickle)"
            ) from e
        raise DataError(f"{path}: corrupt or truncated .npy file: {_one_line(e)}") from e
    except Exception as e:
        raise DataError(f"{path}: corrupt or unreadable .npy file: {_one_line(e)}") from e
    if not isinstance(arr, np.ndarray):  # pragma: no cover - magic check rules out npz
        raise DataError(f"{path}: expected a single array, got {type(arr).__name__}")
    if arr.dtype.kind != "f" or arr.dtype.fields is not None:
        raise DataError(
            f"{path}: dtype {arr.dtype} is not a float type; expected a float array [{n_items}, d]"
        )
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array [{n_items}, d], got shape {arr.shape}")
    if arr.shape[0] != n_items:
        raise DataError(
            f"{path}: has {arr.shape[0]} rows but the interactions file has n_items = {n_items} "
            "(max itemID + 1); row i must describe item i"
        )
    if arr.shape[1] == 0:
        raise DataError(f"{path}: has 0 columns; expected a float array [{n_items}, d] with d >= 1")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        k = _first(~finite)
        col = _first(~np.isfinite(out[k]))
        orig = arr[k, col]
        what = "NaN" if np.isnan(orig) else ("inf" if np.isinf(orig) else f"{orig!r} (overflows float32)")
        raise DataError(
            f"{path}: row {k} (item {k}), column {col} is {what}; all features must be finite "
            f"({int((~finite).sum())} bad rows)"
        )
    if not out.any():
        # A placeholder, not features: its kNN graph would link items at random.
        raise DataError(
            f"{path}: every value is 0; expected informative features (remove the file, or leave "
            "its modality out of data.modalities, to train without it)"
        )
    return out


# --------------------------------------------------------------------------- writer


def save_mmrec(
    data: Interactions,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    ratings: np.ndarray | None = None,
    timestamps: np.ndarray | None = None,
    features: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write ``data`` as an MMRec folder: ``<root>/<name>.inter`` and ``<m>_feat.npy``.

    Rows are written in the order of ``data``. The header is
    ``userID itemID rating timestamp x_label``; ``rating``/``timestamp`` columns are
    written only when given (one value per row). ``features`` defaults to
    ``data.features``. Every file is written to a temporary file in ``root`` and moved
    into place with :func:`os.replace`, so an interrupted write never leaves a partial
    file. Returns the path of the ``.inter`` file.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(data.users)
    if not (len(data.items) == len(data.split) == n):
        raise ValueError("users, items and split must have the same length")
    columns: dict[str, np.ndarray] = {
        "userID": np.asarray(data.users, dtype=np.int64),
        "itemID": np.asarray(data.items, dtype=np.int64),
    }
    for col, values in (("rating", ratings), ("timestamp", timestamps)):
        if values is not None:
            values = np.asarray(values)
            if values.shape != (n,):
                raise ValueError(f"{col} must have shape ({n},), got {values.shape}")
            columns[col] = values
    columns["x_label"] = np.asarray(data.split, dtype=np.int64)
    text = pd.DataFrame(columns).to_csv(sep="\t", index=False, lineterminator="\n")
    path = inter_path(root, name)
    _atomic_write_bytes(path, text.encode("utf-8"))
    for m, arr in (data.features if features is None else features).items():
        _atomic_save_npy(feature_path(root, m), np.ascontiguousarray(arr, dtype=np.float32))
    return path


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    def write(fh) -> None:
        fh.write(payload)

    _atomic_write(path, write)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    _atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))


def plain_file_mode() -> int:
    """The mode ``open()`` gives a new file (0666 less the umask); mkstemp's is 0600, which a
    team sharing a data folder cannot read."""
    mask = os.umask(0)  # the only portable way to read the umask: set it and restore it at once
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, plain_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
