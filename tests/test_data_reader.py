"""MMRec-format reader: round trip, optional columns, cold-start filter, every malformed case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from egra.data.interactions import TEST, TRAIN, VALID, DataError, Interactions
from egra.data.mmrec import load_mmrec, save_mmrec

HEADER = "userID\titemID\trating\ttimestamp\tx_label"
# (user, item, x_label); users 0..2, items 0..3, every split non-empty
ROWS = [
    (0, 0, 0),
    (0, 1, 0),
    (0, 2, 1),
    (0, 3, 2),
    (1, 1, 0),
    (1, 2, 0),
    (1, 3, 1),
    (1, 0, 2),
    (2, 3, 0),
    (2, 0, 1),
    (2, 1, 2),
]


def write_inter(folder: Path, lines: list[str] | str | bytes, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or folder.name}.inter"
    if isinstance(lines, list):
        lines = "\n".join(lines) + "\n"
    path.write_bytes(lines if isinstance(lines, bytes) else lines.encode())
    return path


def good_lines(rows=ROWS) -> list[str]:
    return [HEADER] + [f"{u}\t{i}\t5.0\t{1000 + k}\t{s}" for k, (u, i, s) in enumerate(rows)]


def make(tmp_path: Path, lines, name: str = "ds") -> Path:
    folder = tmp_path / name
    write_inter(folder, lines)
    return folder


def expect_error(folder: Path, *needles: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_mmrec(folder, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def toy(n_items: int = 4, dims=(("image", 6), ("text", 3))) -> Interactions:
    rng = np.random.default_rng(0)
    users, items, split = (np.array(c) for c in zip(*ROWS))
    return Interactions(
        name="toy",
        n_users=3,
        n_items=n_items,
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        split=split.astype(np.int8),
        features={m: rng.standard_normal((n_items, d)).astype(np.float32) for m, d in dims},
    )


# --------------------------------------------------------------------------- good files


def test_round_trip(tmp_path):
    data = toy()
    folder = tmp_path / "toy"
    ratings = np.arange(len(ROWS)) % 5 + 1
    stamps = 1_400_000_000 + np.arange(len(ROWS))
    path = save_mmrec(data, folder, ratings=ratings, timestamps=stamps)
    assert path == folder / "toy.inter"
    assert path.read_text().splitlines()[0] == HEADER
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left
    back = load_mmrec(folder)
    assert back.name == "toy"
    assert (back.n_users, back.n_items) == (3, 4)
    assert back.fingerprint() == data.fingerprint()
    assert back.users.dtype == np.int64 and back.items.dtype == np.int64 and back.split.dtype == np.int8
    for m, f in back.features.items():
        assert f.dtype == np.float32 and f.flags.c_contiguous
        np.testing.assert_array_equal(f, data.features[m])
    assert back.source == str(path)


def test_only_required_columns_and_missing_features_are_optional(tmp_path):
    lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{s}" for u, i, s in ROWS]
    data = load_mmrec(make(tmp_path, lines))
    assert data.features == {}
    assert data.count(TRAIN) == 5 and data.count(VALID) == 3 and data.count(TEST) == 3
    np.testing.assert_array_equal(data.users, [r[0] for r in ROWS])


def test_column_order_extra_columns_crlf_and_trailing_blank_lines(tmp_path):
    lines = ["x_label\tfoo\titemID\tuserID"] + [f"{s}\tbar\t{i}\t{u}" for u, i, s in ROWS]
    text = "\r\n".join(lines) + "\r\n\r\n"
    data = load_mmrec(make(tmp_path, text))
    np.testing.assert_array_equal(data.items, [r[1] for r in ROWS])
    np.testing.assert_array_equal(data.split, [r[2] for r in ROWS])


def test_name_argument_and_selected_modalities(tmp_path):
    folder = tmp_path / "folder"
    save_mmrec(toy(), folder, name="other")
    data = load_mmrec(folder, name="other", modalities=("text",))
    assert data.name == "other" and list(data.features) == ["text"]


def test_cold_start_users_filtered(tmp_path):
    rows = ROWS + [(3, 0, 1), (3, 2, 2)]  # user 3 has no train row
    folder = make(tmp_path, good_lines(rows))
    data = load_mmrec(folder)
    assert data.n_users == 4  # ids unchanged, n_users from the whole file
    assert 3 not in data.users
    assert len(data.users) == len(ROWS)
    raw = load_mmrec(folder, filter_cold_users=False)
    assert len(raw.users) == len(rows) and 3 in raw.users


def test_cold_start_filter_that_empties_a_split(tmp_path):
    rows = [(0, 0, 0), (0, 1, 0), (0, 2, 2), (1, 0, 1)]  # the only valid row is a cold user's
    expect_error(make(tmp_path, good_lines(rows)), "ds.inter", "valid split is empty", "filter_cold_users")


def test_real_sized_file(tmp_path):
    # 160k rows, like Amazon Baby: exercises the fast parse path end to end
    n_users, n_items, per = 16_000, 5000, 10
    users = np.repeat(np.arange(n_users), per)
    items = (users * 7 + np.tile(np.arange(per) * 13, n_users)) % n_items
    split = np.tile(np.array([0] * 8 + [1, 2], dtype=np.int8), n_users)
    data = Interactions("big", n_users, n_items, users, items, split)
    save_mmrec(data, tmp_path / "big")
    back = load_mmrec(tmp_path / "big")
    assert back.fingerprint() == data.fingerprint()


# --------------------------------------------------------------------------- missing files


def test_missing_folder(tmp_path):
    expect_error(tmp_path / "nope", "nope", "does not exist")


def test_missing_inter_file_lists_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "baby.inter").write_text(HEADER + "\n")
    expect_error(folder, "ds.inter", "not found", "baby.inter")


def test_inter_path_given_instead_of_folder(tmp_path):
    path = write_inter(tmp_path / "ds", good_lines())
    expect_error(path, "ds.inter", "expected a dataset folder")


def test_required_feature_missing(tmp_path):
    folder = make(tmp_path, good_lines())
    expect_error(folder, "image_feat.npy", "not found", require_features=True)


# --------------------------------------------------------------------------- malformed .inter


def test_empty_file(tmp_path):
    expect_error(make(tmp_path, b""), "ds.inter", "empty")


def test_header_only(tmp_path):
    expect_error(make(tmp_path, [HEADER]), "ds.inter", "no data rows")


def test_no_header(tmp_path):
    lines = [f"{u}\t{i}\t{s}" for u, i, s in ROWS]
    expect_error(make(tmp_path, lines), "ds.inter", "line 1", "userID", "no header")


def test_missing_required_column(tmp_path):
    lines = ["userID\titemID\trating"] + [f"{u}\t{i}\t5" for u, i, _ in ROWS]
    expect_error(make(tmp_path, lines), "ds.inter", "'x_label'", "'userID', 'itemID', 'rating'")


def test_space_separated_file(tmp_path):
    lines = [line.replace("\t", " ") for line in good_lines()]
    expect_error(make(tmp_path, lines), "ds.inter", "missing required column", "tab-separated")


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        ("userID", "abc"),
        ("itemID", "2.5"),
        ("x_label", "train"),
        ("itemID", ""),
        ("userID", "99999999999999999999"),
    ],
)
def test_non_integer_value(tmp_path, column, bad):
    lines = good_lines()
    fields = lines[4].split("\t")  # file line 5
    fields[HEADER.split("\t").index(column)] = bad
    lines[4] = "\t".join(fields)
    expect_error(make(tmp_path, lines), "ds.inter", "line 5", f"column {column}", repr(bad))


def test_integral_float_ids_are_accepted(tmp_path):
    lines = good_lines()
    lines[1] = lines[1].replace("0\t0\t", "0.0\t0\t", 1)
    assert load_mmrec(make(tmp_path, lines)).users[0] == 0


def test_wrong_field_count(tmp_path):
    lines = good_lines()
    lines[3] += "\t7"
    expect_error(make(tmp_path, lines), "ds.inter", "line 4", "expected 5", "found 6")
    lines = good_lines()
    lines[6] = "1\t2"
    expect_error(make(tmp_path / "b", lines), "ds.inter", "line 7", "found 2")


def test_blank_line_inside(tmp_path):
    lines = good_lines()
    lines.insert(3, "")
    expect_error(make(tmp_path, lines), "ds.inter", "line 4", "blank")


def test_not_utf8(tmp_path):
    text = ("\n".join(good_lines()) + "\n").encode() + b"\xff\xfe\t1\t1\t1\t0\n"
    expect_error(make(tmp_path, text), "ds.inter", f"line {len(ROWS) + 2}", "UTF-8")


def test_negative_id(tmp_path):
    lines = good_lines()
    lines[3] = lines[3].replace("0\t2\t", "0\t-2\t", 1)
    expect_error(make(tmp_path, lines), "ds.inter", "line 4", "itemID", ">= 0", "-2")


def test_label_out_of_range(tmp_path):
    lines = good_lines()
    lines[2] = lines[2][:-1] + "3"
    expect_error(make(tmp_path, lines), "ds.inter", "line 3", "x_label", "got 3")


@pytest.mark.parametrize(("col", "what", "idx"), [(0, "user", 4), (1, "item", 5)])
def test_ids_not_contiguous(tmp_path, col, what, idx):
    rows = [list(r) for r in ROWS]
    rows[-1][col] = 6  # ids 0..6 with 4 (user) / 4,5 (item) missing
    rows = [tuple(r) for r in rows]
    msg = expect_error(make(tmp_path, good_lines(rows)), "ds.inter", f"{what} ids must be contiguous")
    missing = 3 if col == 0 else 4
    assert f"id {missing} never appears" in msg


@pytest.mark.parametrize(("split", "name"), [(0, "train"), (1, "valid"), (2, "test")])
def test_empty_split(tmp_path, split, name):
    rows = [(u, i, (s + 1) % 3 if s == split else s) for u, i, s in ROWS]
    expect_error(make(tmp_path, good_lines(rows)), "ds.inter", f"{name} split is empty", "x_label")


def test_duplicate_pair(tmp_path):
    rows = ROWS + [(1, 2, 1)]  # same pair as file line 7
    expect_error(make(tmp_path, good_lines(rows)), "ds.inter", "lines 7 and 13", "(1, 2)", "duplicate")


# --------------------------------------------------------------------------- malformed features


def with_features(tmp_path: Path, arr) -> Path:
    folder = make(tmp_path, good_lines())
    np.save(folder / "image_feat.npy", arr, allow_pickle=True)
    return folder


def test_feature_row_count(tmp_path):
    folder = with_features(tmp_path, np.zeros((3, 5), np.float32))
    expect_error(folder, "image_feat.npy", "3 rows", "n_items = 4")


def test_feature_not_2d(tmp_path):
    expect_error(with_features(tmp_path, np.zeros(4, np.float32)), "image_feat.npy", "2-D", "(4,)")


def test_feature_int_dtype(tmp_path):
    expect_error(with_features(tmp_path, np.zeros((4, 2), np.int64)), "image_feat.npy", "int64", "float")


def test_feature_object_array_refused(tmp_path):
    arr = np.empty((4, 2), dtype=object)
    arr[:] = 1.0
    expect_error(with_features(tmp_path, arr), "image_feat.npy", "Python objects", "pickle")


def test_feature_nan_and_inf(tmp_path):
    arr = np.ones((4, 3), np.float64)
    arr[2, 1] = np.nan
    expect_error(with_features(tmp_path, arr), "image_feat.npy", "row 2", "NaN")
    arr = np.ones((4, 3), np.float64)
    arr[1, 0] = 1e300  # finite in float64, inf in float32
    expect_error(with_features(tmp_path / "b", arr), "image_feat.npy", "row 1", "overflows float32")


def test_feature_corrupt(tmp_path):
    folder = make(tmp_path, good_lines())
    (folder / "image_feat.npy").write_bytes(b"definitely not numpy")
    expect_error(folder, "image_feat.npy", "not a .npy")
    np.save(folder / "image_feat.npy", np.ones((4, 64), np.float32))
    raw = (folder / "image_feat.npy").read_bytes()
    (folder / "image_feat.npy").write_bytes(raw[: len(raw) // 2])  # truncated
    expect_error(folder, "image_feat.npy", "corrupt")


def test_feature_float64_is_converted(tmp_path):
    folder = with_features(tmp_path, np.arange(8, dtype=np.float64).reshape(4, 2))
    f = load_mmrec(folder).features["image"]
    assert f.dtype == np.float32 and f.flags.c_contiguous and f[3, 1] == 7.0


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    folder = tmp_path / "toy"
    save_mmrec(toy(), folder)
    before = (folder / "toy.inter").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", boom)
    other = toy(dims=(("image", 2),))
    with pytest.raises(KeyboardInterrupt):
        save_mmrec(other, folder, ratings=np.ones(len(ROWS), int))
    assert (folder / "toy.inter").read_bytes() != before  # .inter was replaced whole
    assert np.load(folder / "image_feat.npy").shape == (4, 6)  # old features intact
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # temp file removed
