"""Bad datasets fail before any training, as one line naming the file (bad settings:
tests/test_bad_settings.py); the checks accept what the project ships.

Each case goes through the entry point's task function (``egra.cli.train.main.__wrapped__``,
what ``egra-train`` runs after composing) with the stages that train replaced by a tripwire.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
from annotated_types import Gt
from pydantic import create_model

from egra.cli.errors import EXIT_DATA
from egra.models import EGRA
from egra.pipeline import checks, schema
from egra.pipeline.checks import ConfigError, check_config
from tests.conftest import make_cfg
from tests.test_data_reader import HEADER, ROWS, good_lines, write_inter

ROOT = Path(__file__).resolve().parents[1]


def _lines_with(edit) -> list[str]:
    lines = good_lines()
    edit(lines)
    return lines


def _set(i: int, text: str):
    def edit(lines: list[str]) -> None:
        lines[i] = text

    return edit


def _folder(tmp: Path, lines=None, features: dict | None = None) -> Path:
    folder = tmp / "ds"
    if lines is not None:
        write_inter(folder, lines)
    else:
        folder.mkdir(parents=True)
    for name, arr in (features or {}).items():
        np.save(folder / f"{name}_feat.npy", arr)
    return folder


# (name, folder builder, extra overrides, text the line must contain).
BAD_DATASETS = [
    ("missing folder", lambda t: t / "nowhere", [], "dataset folder does not exist"),
    ("no .inter", lambda t: _folder(t), [], "interactions file not found"),
    ("empty file", lambda t: _folder(t, b""), [], "ds.inter: "),
    ("header only", lambda t: _folder(t, [HEADER]), [], "no data rows"),
    ("no x_label", lambda t: _folder(t, [line.rsplit("\t", 1)[0] for line in good_lines()]), [], "x_label"),
    ("letter id", lambda t: _folder(t, _lines_with(_set(4, "a\t1\t5.0\t1\t0"))), [], "line 5"),
    ("field count", lambda t: _folder(t, _lines_with(_set(3, "0\t2"))), [], "line 4"),
    ("negative id", lambda t: _folder(t, _lines_with(_set(3, "0\t-2\t5.0\t1\t1"))), [], ">= 0"),
    ("label 3", lambda t: _folder(t, _lines_with(_set(2, "0\t1\t5.0\t1\t3"))), [], "x_label"),
    ("duplicate pair", lambda t: _folder(t, good_lines([*ROWS, (1, 2, 0)])), [], "duplicate"),
    (
        "not utf8",
        lambda t: _folder(t, ("\n".join(good_lines()) + "\n").encode() + b"\xff\xfe\n"),
        [],
        "UTF-8",
    ),
    (
        "feature rows",
        lambda t: _folder(t, good_lines(), {"image": np.zeros((3, 2), np.float32)}),
        [],
        "image_feat.npy",
    ),
    (
        "feature NaN",
        lambda t: _folder(t, good_lines(), {"text": np.full((4, 2), np.nan, np.float32)}),
        [],
        "text_feat.npy",
    ),
    (
        "features needed",
        lambda t: _folder(t, good_lines()),
        ["model=egra"],
        "model (EGRA) needs item features, but none of image_feat.npy, text_feat.npy is there",
    ),
]


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    return tmp_path_factory.mktemp("checks")


@pytest.fixture
def no_training(monkeypatch):
    """Every stage that trains or builds raises: a case that reaches one fails the test."""
    import egra.pipeline.fit as fit
    import egra.pipeline.graph as graph
    import egra.pipeline.pretrain as pretrain

    def tripwire(*args, **kwargs):
        raise AssertionError("a stage started before the bad input was reported")

    monkeypatch.setattr(fit, "fit", tripwire)
    monkeypatch.setattr(fit, "build_net", tripwire)
    monkeypatch.setattr(graph, "build_graphs", tripwire)
    monkeypatch.setattr(pretrain, "pretrain", tripwire)
    monkeypatch.setattr(pretrain, "build_graphs", tripwire)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def _cli_fails(cfg, capsys) -> tuple[int, str, float]:
    from egra.cli.train import main

    capsys.readouterr()
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main.__wrapped__(cfg)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    return info.value.code, err, elapsed


def _assert_one_line(err: str, needle: str) -> None:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize(
    ("name", "build", "overrides", "needle"), BAD_DATASETS, ids=[c[0] for c in BAD_DATASETS]
)
def test_bad_dataset_is_one_line_before_training(
    tmp_path, no_training, capsys, name, build, overrides, needle
):
    folder = build(tmp_path)
    cfg = make_cfg(tmp_path, ["data=mmrec", f"data.root={folder}", *overrides], tiny=False)
    code, err, elapsed = _cli_fails(cfg, capsys)
    assert code == EXIT_DATA
    _assert_one_line(err, needle)
    assert str(folder) in err  # names the folder or a file in it
    assert elapsed < 5.0


def test_verbose_keeps_the_traceback(shared_root, no_training):
    from egra.cli.train import main

    cfg = make_cfg(shared_root, ["trainer.max_epochs=0", "verbose=true"])
    with pytest.raises(ConfigError, match="trainer.max_epochs=0"):
        main.__wrapped__(cfg)


def test_every_shipped_config_passes(tmp_path):
    """The checks reject nothing the project ships (every experiment, the pretrain entry)."""
    for exp in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        check_config(make_cfg(tmp_path, [f"experiment={exp}", "data.root=/unused"], tiny=False))
    for model in ("bpr", "lightgcn", "mgcn", "freedom", "lgmrec", "damrs", "egra"):
        check_config(make_cfg(tmp_path, [f"model={model}"]))
    check_config(make_cfg(tmp_path, ["model=egra", "graph.graph_source=none", "graph.k_pt=0"]))
    check_config(make_cfg(tmp_path, [], config_name="pretrain"))


class EGRAPlus(EGRA):
    """A model that grew a key (as a new model would): forwards the rest to EGRA."""

    def __init__(self, *, align_gain: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.align_gain = align_gain


def test_a_new_model_key_needs_no_schema_entry(tmp_path, monkeypatch):
    """A model's keys come from its constructor (read from source, through **kwargs to its
    base class), typed by their defaults; a range is one field of schema.ModelArgs."""
    plus = ["model=egra", f"model._target_={__name__}.EGRAPlus"]
    check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=2.0"]))
    with pytest.raises(ConfigError, match="model.align_gain='abc': expected a number$"):
        check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=abc"]))
    with pytest.raises(ConfigError, match="model.lambda_mn: not an argument of EGRAPlus"):
        check_config(make_cfg(tmp_path, [*plus, "+model.lambda_mn=1"]))
    check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=-1"]))
    ranged = create_model("ModelArgs", __base__=schema.ModelArgs, align_gain=(Annotated[float, Gt(0)], None))
    monkeypatch.setattr(schema, "ModelArgs", ranged)
    checks._args_model.cache_clear()
    try:
        with pytest.raises(ConfigError, match="model.align_gain=-1: expected a number > 0"):
            check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=-1"]))
    finally:
        checks._args_model.cache_clear()


def test_pretrain_entry_point_names_the_missing_feature_files(tmp_path, no_training, capsys):
    from egra.cli.pretrain import main

    folder = _folder(tmp_path, good_lines())
    cfg = make_cfg(tmp_path, ["data=mmrec", f"data.root={folder}"], config_name="pretrain", tiny=False)
    with pytest.raises(SystemExit) as info:
        main.__wrapped__(cfg)
    assert info.value.code == EXIT_DATA
    _assert_one_line(
        capsys.readouterr().err,
        f"egra-pretrain: bad data: {folder}: backbones.mgcn (MGCN) needs item features, "
        "but none of image_feat.npy, text_feat.npy is there",
    )
