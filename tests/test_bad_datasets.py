"""Malformed datasets: each one ends ``egra-train`` with exit status 3 and one line on stderr
naming the file (and line, column) and what was expected, before any stage starts.

Every case goes through the entry point's task function (``egra.cli.train.main.__wrapped__``,
what ``egra-train`` runs once Hydra has composed the config) with every stage that trains or
builds replaced by a tripwire; a few go through the real command line. Files that are odd
but fine (trailing tabs, BOM, CRLF, CR) parse, and facts that do not stop a run are one
warning line each (a missing modality file, items without a train row).
"""

from __future__ import annotations

import codecs
import copy
import gzip
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from egra.cli.errors import EXIT_DATA
from egra.data.interactions import TEST, TRAIN
from egra.data.mmrec import load_mmrec
from tests.conftest import make_cfg
from tests.test_data_reader import HEADER, ROWS, good_lines

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 4  # items of ROWS


# --------------------------------------------------------------------------- builders


def _text(lines: list[str], end: str = "\n") -> bytes:
    return (end.join(lines) + end).encode()


def _write(tmp: Path, inter: bytes | None, feats: dict | None = None, name: str = "ds") -> Path:
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    if inter is not None:
        (folder / f"{name}.inter").write_bytes(inter)
    for m, arr in (feats or {}).items():
        path = folder / f"{m}_feat.npy"
        if isinstance(arr, bytes):
            path.write_bytes(arr)
        else:
            np.save(path, arr, allow_pickle=True)
    return folder


def inter(lines: list[str] | bytes, end: str = "\n") -> Callable[[Path], Path]:
    return lambda t: _write(t, lines if isinstance(lines, bytes) else _text(lines, end))


def edited(line: int, column: str, value: str) -> list[str]:
    """``good_lines()`` with file line ``line`` (1-based) having ``value`` in ``column``."""
    lines = good_lines()
    fields = lines[line - 1].split("\t")
    fields[HEADER.split("\t").index(column)] = value
    lines[line - 1] = "\t".join(fields)
    return lines


def rows(new_rows) -> list[str]:
    return good_lines(new_rows)


def features(arr, modality: str = "image") -> Callable[[Path], Path]:
    return lambda t: _write(t, _text(good_lines()), {modality: arr})


def _npy_bytes(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, x=np.ones((N_ITEMS, 2), np.float32))
    return buf.getvalue()


def _header_garbage() -> bytes:
    raw = _npy_bytes(np.ones((N_ITEMS, 2), np.float32))
    return raw[:10] + b"{'descr': nonsense" + raw[28:]


def _nan(shape=(N_ITEMS, 3), at=(2, 1), value=np.nan, dtype=np.float32):
    arr = np.ones(shape, dtype)
    arr[at] = value
    return arr


def _structured():
    arr = np.zeros(N_ITEMS, dtype=[("a", "f4"), ("b", "f4")])
    return arr


def _object():
    arr = np.empty((N_ITEMS, 2), dtype=object)
    arr[:] = 1.0
    return arr


def _dir_named_inter(t: Path) -> Path:
    folder = t / "ds"
    (folder / "ds.inter").mkdir(parents=True)
    return folder


def _broken_link_inter(t: Path) -> Path:
    folder = t / "ds"
    folder.mkdir()
    (folder / "ds.inter").symlink_to(t / "gone.inter")
    return folder


def _fifo_inter(t: Path) -> Path:
    folder = t / "ds"
    folder.mkdir()
    os.mkfifo(folder / "ds.inter")  # reading it would block forever
    return folder


def _broken_link_root(t: Path) -> Path:
    (t / "ds").symlink_to(t / "moved-away")
    return t / "ds"


def _other_inter(t: Path) -> Path:
    return _write(t, None, {"image": np.ones((N_ITEMS, 2), np.float32)}) and (
        (t / "ds" / "baby.inter").write_bytes(_text(good_lines())) and t / "ds"
    )


def _empty_folder(t: Path) -> Path:
    (t / "ds").mkdir()
    return t / "ds"


def _feature_dir(t: Path) -> Path:
    folder = _write(t, _text(good_lines()))
    (folder / "image_feat.npy").mkdir()
    return folder


def _feature_broken_link(t: Path) -> Path:
    folder = _write(t, _text(good_lines()))
    (folder / "image_feat.npy").symlink_to(t / "features-elsewhere.npy")
    return folder


def _insert(lines: list[str], at: int, line: str) -> list[str]:
    """``line`` becomes file line ``at`` (1-based)."""
    return lines[: at - 1] + [line] + lines[at - 1 :]


def _with_tabs(lines: list[str], tabs: str = "\t") -> list[str]:
    return [lines[0]] + [line + tabs for line in lines[1:]]


_bad_utf8_row = _text(good_lines()[:5]) + b"1\t\xff\xfe\t5.0\t1\t0\n" + _text(good_lines()[5:])
_nul_row = _text(good_lines()[:4]) + b"1\t1\t5.0\t1003\t0\x00\n" + _text(good_lines()[5:])

# (id, builder(tmp_path) -> dataset folder, extra overrides, text the one line must contain)
CASES: list[tuple[str, Callable[[Path], Path], list[str], str]] = [
    # -- the folder and its files
    ("folder missing", lambda t: t / "nope", [], "nope: dataset folder does not exist"),
    (
        "root is the .inter file",
        lambda t: inter(good_lines())(t) / "ds.inter",
        [],
        "expected a dataset folder, got a file",
    ),
    ("root is a broken link", _broken_link_root, [], "ds: is a broken symbolic link"),
    ("empty folder", _empty_folder, [], "ds.inter: interactions file not found; expected 'ds.inter' in"),
    ("other .inter only", _other_inter, [], "which holds: baby.inter, image_feat.npy"),
    (".inter is a directory", _dir_named_inter, [], "ds.inter: is a directory, expected a file"),
    (".inter is a broken link", _broken_link_inter, [], "ds.inter: is a broken symbolic link"),
    (".inter is a pipe", _fifo_inter, [], "ds.inter: is not a regular file"),
    ("feature file is a directory", _feature_dir, [], "image_feat.npy: is a directory, expected a file"),
    ("feature file is a broken link", _feature_broken_link, [], "image_feat.npy: is a broken symbolic link"),
    (
        "required feature missing",
        inter(good_lines()),
        ["data.require_features=true"],
        "image_feat.npy: feature file for modality 'image' not found (require_features=True)",
    ),
    (
        "model needs features, none there",
        inter(good_lines()),
        ["model=egra"],
        "image_feat.npy, text_feat.npy",
    ),
    # -- the header
    ("empty file", inter(b""), [], "ds.inter: file is empty"),
    ("blank header", inter(["", *good_lines()[1:]]), [], "line 1 (header) is blank"),
    ("header only", inter([HEADER]), [], "no data rows after the header"),
    ("header and blank lines only", inter([HEADER, "", "  ", ""]), [], "no data rows after the header"),
    ("no header", inter([f"{u}\t{i}\t{s}" for u, i, s in ROWS]), [], "the file seems to have no header row"),
    (
        "missing x_label",
        inter(["userID\titemID\trating"] + [f"{u}\t{i}\t5" for u, i, _ in ROWS]),
        [],
        "line 1: missing required column 'x_label'",
    ),
    ("space-separated", inter([x.replace("\t", " ") for x in good_lines()]), [], "(tab-separated; required"),
    (
        "comma-separated",
        inter([x.replace("\t", ",") for x in good_lines()]),
        [],
        "the file seems comma-separated",
    ),
    (
        "duplicate column",
        inter(["userID\titemID\titemID\tx_label"] + [f"{u}\t{i}\t{i}\t{s}" for u, i, s in ROWS]),
        [],
        "column 'itemID' appears 2 times",
    ),
    (
        "wrong case",
        inter(["userid" + HEADER[6:], *good_lines()[1:]]),
        [],
        "names are case-sensitive ('userid' for 'userID')",
    ),
    (
        "header not UTF-8",
        inter(b"user\xe9ID\titemID\tx_label\n0\t0\t0\n"),
        [],
        "line 1: header is not valid UTF-8",
    ),
    ("UTF-16 file", inter(codecs.BOM_UTF16_LE + "\n".join(good_lines()).encode("utf-16-le")), [], "UTF-16"),
    ("gzip file", inter(gzip.compress(_text(good_lines()))), [], "gzip-compressed: decompress it first"),
    (
        "BOM and a missing column",
        inter(codecs.BOM_UTF8 + _text(["userID\titemID"] + [f"{u}\t{i}" for u, i, _ in ROWS])),
        [],
        "header has 'userID', 'itemID' (tab-separated",
    ),
    # -- values
    (
        "userID not a number",
        inter(edited(5, "userID", "abc")),
        [],
        "line 5, column userID: expected an integer, got 'abc'",
    ),
    (
        "itemID fractional",
        inter(edited(5, "itemID", "2.5")),
        [],
        "line 5, column itemID: expected an integer, got '2.5'",
    ),
    (
        "x_label a word",
        inter(edited(5, "x_label", "train")),
        [],
        "line 5, column x_label: expected an integer, got 'train'",
    ),
    (
        "itemID empty",
        inter(edited(6, "itemID", "")),
        [],
        "line 6, column itemID: expected an integer, got ''",
    ),
    (
        "userID beyond int64",
        inter(edited(3, "userID", "9" * 21)),
        [],
        "line 3, column userID: expected an integer",
    ),
    (
        "userID nan",
        inter(edited(4, "userID", "nan")),
        [],
        "line 4, column userID: expected an integer, got 'nan'",
    ),
    (
        "itemID inf",
        inter(edited(4, "itemID", "inf")),
        [],
        "line 4, column itemID: expected an integer, got 'inf'",
    ),
    (
        "quoted id",
        inter(edited(2, "userID", '"0"')),
        [],
        "line 2, column userID: expected an integer, got '\"0\"'",
    ),
    (
        "x_label 1.5",
        inter(edited(7, "x_label", "1.5")),
        [],
        "line 7, column x_label: expected an integer, got '1.5'",
    ),
    (
        "too many fields",
        inter(_insert(good_lines()[:3] + good_lines()[4:], 4, good_lines()[3] + "\t7")),
        [],
        "line 4: expected 5 tab-separated fields",
    ),
    (
        "too few fields",
        inter(_insert(good_lines()[:6] + good_lines()[7:], 7, "1\t2")),
        [],
        "line 7: expected 5 tab-separated fields (userID, itemID, rating, timestamp, x_label), found 2",
    ),
    (
        "a value after trailing tabs",
        inter(_insert(good_lines()[:5] + good_lines()[6:], 6, good_lines()[5] + "\t\t7")),
        [],
        "line 6: expected 5 tab-separated fields (userID, itemID, rating, timestamp, x_label), found 7 (values after the last column)",
    ),
    ("blank line inside", inter(_insert(good_lines(), 4, "")), [], "line 4: blank line"),
    ("whitespace line inside", inter(_insert(good_lines(), 9, "   \t ")), [], "line 9: blank line"),
    ("row not UTF-8", inter(_bad_utf8_row), [], "line 6: not valid UTF-8 text"),
    ("NUL byte", inter(_nul_row), [], "line 5, column x_label: expected an integer"),
    (
        "second header inside",
        inter(_insert(good_lines(), 8, HEADER)),
        [],
        "line 8, column userID: expected an integer, got 'userID'",
    ),
    (
        "negative userID",
        inter(edited(4, "userID", "-1")),
        [],
        "line 4, column userID: expected an id >= 0, got -1",
    ),
    (
        "negative itemID",
        inter(edited(4, "itemID", "-2")),
        [],
        "line 4, column itemID: expected an id >= 0, got -2",
    ),
    (
        "x_label 3",
        inter(edited(3, "x_label", "3")),
        [],
        "line 3, column x_label: expected 0 (train), 1 (valid) or 2 (test), got 3",
    ),
    ("x_label -1", inter(edited(3, "x_label", "-1")), [], "got -1"),
    (
        "id implausibly large",
        inter(edited(12, "itemID", str(2**41))),
        [],
        "line 12, column itemID: expected an id < 2**40",
    ),
    ("user id gap", inter(rows(ROWS[:-1] + [(6, 1, 2)])), [], "column userID: user ids must be contiguous"),
    ("item id gap", inter(rows(ROWS[:-1] + [(2, 6, 2)])), [], "column itemID: item ids must be contiguous"),
    (
        "no train rows",
        inter(rows([(u, i, 1 if s == TRAIN else s) for u, i, s in ROWS])),
        [],
        "the train split is empty",
    ),
    (
        "no valid rows",
        inter(rows([(u, i, 2 if s == 1 else s) for u, i, s in ROWS])),
        [],
        "the valid split is empty",
    ),
    (
        "no test rows",
        inter(rows([(u, i, 1 if s == TEST else s) for u, i, s in ROWS])),
        [],
        "the test split is empty",
    ),
    (
        "duplicate pair",
        inter(rows(ROWS + [(1, 2, 1)])),
        [],
        "lines 7 and 13: duplicate (userID, itemID) pair (1, 2)",
    ),
    (
        "valid only of a cold user",
        inter(rows([(0, 0, 0), (0, 1, 0), (0, 2, 2), (1, 0, 1)])),
        [],
        "valid split is empty after dropping",
    ),
    (
        "CRLF, bad value",
        inter(edited(5, "itemID", "x"), end="\r\n"),
        [],
        "line 5, column itemID: expected an integer, got 'x'",
    ),
    (
        "CR only, negative id",
        inter(edited(4, "userID", "-3"), end="\r"),
        [],
        "line 4, column userID: expected an id >= 0, got -3",
    ),
    (
        "BOM, bad value",
        inter(codecs.BOM_UTF8 + _text(edited(3, "x_label", "9"))),
        [],
        "line 3, column x_label: expected 0 (train)",
    ),
    (
        "trailing tabs, bad value",
        inter(_with_tabs(edited(6, "userID", "u6"))),
        [],
        "line 6, column userID: expected an integer, got 'u6'",
    ),
    (
        "trailing tabs, id gap",
        inter(_with_tabs(rows(ROWS[:-1] + [(2, 9, 2)]))),
        [],
        "item ids must be contiguous",
    ),
    # -- feature files
    (
        "features: fewer rows than items",
        features(np.ones((3, 5), np.float32)),
        [],
        "has 3 rows but the interactions file has n_items = 4",
    ),
    ("features: more rows than items", features(np.ones((5, 5), np.float32)), [], "has 5 rows"),
    (
        "features: 1-D",
        features(np.ones(N_ITEMS, np.float32)),
        [],
        "expected a 2-D array [4, d], got shape (4,)",
    ),
    ("features: 3-D", features(np.ones((N_ITEMS, 2, 2), np.float32)), [], "got shape (4, 2, 2)"),
    ("features: 0 columns", features(np.ones((N_ITEMS, 0), np.float32)), [], "has 0 columns"),
    ("features: int64", features(np.ones((N_ITEMS, 2), np.int64)), [], "dtype int64 is not a float type"),
    ("features: bool", features(np.ones((N_ITEMS, 2), bool)), [], "dtype bool is not a float type"),
    (
        "features: complex",
        features(np.ones((N_ITEMS, 2), np.complex64)),
        [],
        "dtype complex64 is not a float type",
    ),
    ("features: structured", features(_structured()), [], "is not a float type"),
    ("features: objects", features(_object()), [], "holds Python objects"),
    ("features: NaN", features(_nan()), [], "row 2 (item 2), column 1 is NaN"),
    ("features: inf", features(_nan(value=np.inf)), [], "column 1 is inf"),
    ("features: -inf", features(_nan(at=(0, 0), value=-np.inf)), [], "row 0 (item 0), column 0 is inf"),
    ("features: overflow float32", features(_nan(value=1e300, dtype=np.float64)), [], "overflows float32"),
    (
        "features: all zero",
        features(np.zeros((N_ITEMS, 8), np.float32)),
        [],
        "image_feat.npy: every value is 0",
    ),
    ("features: NaN in the 2nd modality", features(_nan(), modality="text"), [], "text_feat.npy: row 2"),
    ("features: not .npy", features(b"definitely not numpy"), [], "not a .npy file (bad magic bytes)"),
    ("features: empty file", features(b""), [], "image_feat.npy: file is empty"),
    ("features: .npz", features(_npz_bytes()), [], "is a zip archive (np.savez?)"),
    (
        "features: truncated",
        features(_npy_bytes(np.ones((N_ITEMS, 64), np.float32))[:300]),
        [],
        "corrupt or truncated .npy",
    ),
    ("features: garbled header", features(_header_garbage()), [], "image_feat.npy: corrupt"),
]


_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def _config(tmp_path: Path, folder: Path, overrides: list[str]) -> DictConfig:
    """``make_cfg(tmp_path, [data=mmrec, data.root=folder, *overrides])``, composed once per
    set of overrides (composing takes most of a case's time)."""
    key = tuple(overrides)
    if key not in _COMPOSED:
        _COMPOSED[key] = make_cfg(tmp_path, ["data=mmrec", "data.root=/unset", *overrides], tiny=False)
    cfg = copy.deepcopy(_COMPOSED[key])
    cfg.paths.root_dir = str(tmp_path)  # data, artifact and log dirs follow it
    cfg.paths.output_dir = str(tmp_path / "run")
    cfg.data.root = str(folder)
    return cfg


@pytest.fixture
def no_stage(monkeypatch):
    """Every stage that trains or builds raises: a case that reaches one fails the test."""
    import egra.pipeline.fit as fit
    import egra.pipeline.graph as graph
    import egra.pipeline.pretrain as pretrain

    def tripwire(*args, **kwargs):
        raise AssertionError("a stage started before the bad data was reported")

    for mod, name in [
        (fit, "fit"),
        (fit, "build_net"),
        (graph, "build_graphs"),
        (pretrain, "pretrain"),
        (pretrain, "build_graphs"),
    ]:
        monkeypatch.setattr(mod, name, tripwire)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 58
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "build", "overrides", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_dataset_is_one_line_and_exit_3(tmp_path, no_stage, capsys, name, build, overrides, needle):
    from egra.cli.train import main

    folder = build(tmp_path)
    cfg = _config(tmp_path, folder, overrides)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main.__wrapped__(cfg)
    err = capsys.readouterr().err
    assert info.value.code == EXIT_DATA, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("egra-train: bad data: "), lines[0]
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert str(folder) in lines[0]  # names the folder or a file in it
    assert not (tmp_path / "artifacts").exists()


# Through the real command line: the exit status, and stderr holding nothing but the line.
CLI_CASES = [".inter is a directory", "trailing tabs, bad value"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CLI_CASES)
def test_bad_dataset_on_the_command_line(tmp_path, name):
    _, build, overrides, needle = next(c for c in CASES if c[0] == name)
    folder = build(tmp_path)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        "data=mmrec",
        f"data.root={folder}",
        *overrides,
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=none",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == EXIT_DATA, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("egra-train: bad data: ") and needle in line
    assert not (tmp_path / "artifacts").exists()


# --------------------------------------------------------------------------- odd but fine


@pytest.mark.parametrize(
    "text",
    [
        _text(_with_tabs(good_lines())),  # every row ends in a tab (the header does not)
        _text(_with_tabs(good_lines(), "\t\t")),
        _text([x + "\t" for x in good_lines()]),  # header too
        _text(good_lines()[:6] + _with_tabs(good_lines())[6:]),  # some rows only
        _text(_with_tabs(good_lines()), end="\r\n"),
        _text(good_lines(), end="\r"),
        codecs.BOM_UTF8 + _text(good_lines(), end="\r\n"),
        _text(good_lines()) + b"\n\n",
    ],
    ids=["row tabs", "two tabs", "header tab", "some rows", "CRLF tabs", "CR", "BOM CRLF", "blank end"],
)
def test_files_that_parse(tmp_path, text):
    data = load_mmrec(_write(tmp_path, text))
    np.testing.assert_array_equal(data.users, [r[0] for r in ROWS])
    np.testing.assert_array_equal(data.items, [r[1] for r in ROWS])
    np.testing.assert_array_equal(data.split, [r[2] for r in ROWS])


def test_a_missing_modality_file_is_one_line_naming_what_is_used(tmp_path, caplog):
    folder = _write(tmp_path, _text(good_lines()), {"text": np.ones((N_ITEMS, 3), np.float32)})
    with caplog.at_level(logging.WARNING, logger="egra.data.mmrec"):
        data = load_mmrec(folder)
    assert list(data.features) == ["text"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: no image_feat.npy; item features: text only"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="egra.data.mmrec"):
        load_mmrec(folder, modalities=("text",))  # asked for what is there: nothing to say
        load_mmrec(_write(tmp_path, _text(good_lines()), name="plain"))  # interactions only: ID models
    assert not caplog.records


def test_items_without_a_train_row_are_one_line_and_kept(tmp_path, caplog):
    # item 4 appears only in user 2's test row, item 5 only in a valid row
    folder = _write(tmp_path, _text(good_lines(ROWS + [(2, 4, 2), (0, 5, 1)])))
    with caplog.at_level(logging.WARNING, logger="egra.data.mmrec"):
        data = load_mmrec(folder)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{folder / 'ds.inter'}: 2 item(s) appear only in valid/test rows (e.g. itemID 4)")
    assert data.n_items == 6 and 4 in data.items  # kept and ranked, as in MMRec
