"""Bad settings and bad datasets fail before any training, as one line naming the key or file.

Each case goes through the entry point's task function (``egra.cli.train.main.__wrapped__``,
what ``egra-train`` runs after composing) with the stages that train replaced by a tripwire.
One subprocess checks the real command line: exit status and nothing but the line on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from egra.cli.errors import EXIT_CONFIG, EXIT_DATA
from egra.models import EGRA
from egra.pipeline.checks import MODEL_RULES, ConfigError, Rule, check_config
from tests.conftest import make_cfg
from tests.test_data_reader import HEADER, ROWS, good_lines, write_inter

ROOT = Path(__file__).resolve().parents[1]

# (overrides, text the line must contain). Model keys not mentioned keep the model's defaults.
BAD_SETTINGS = [
    (["model=egra", "model.lambda_min=0.5", "model.lambda_max=0.1"], "expected lambda_min <= lambda_max"),
    (["model=egra", "model.lambda_min=-1"], "model.lambda_min=-1"),
    (["model=egra", "model.P=-1"], "model.P=-1"),
    (["model=egra", "model.beta=-1"], "model.beta=-1"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0"),
    (["data.preset=huge"], "data.preset='huge': expected one of tiny, small"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["model=egra", "model.k_pt=0"], "model.graph_source=none"),
    (["model=egra", "model.ramp=foo"], "model.ramp='foo': expected one of linear, cosine, step"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc': expected an integer >= 1"),
    (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5"),
    (["model=egra", "model.tau_u=0"], "model.tau_u=0"),
    (["model=egra", "model.k_pt=500"], "model.k_pt=500: expected 1 <= k_pt < the 120 items"),
    (
        ["model=egra", "+model.lambda_mn=0.1"],
        "model.lambda_mn: not an argument of EGRA (did you mean lambda_min?)",
    ),
    (["model=egra", "model.entity_weighting=upside"], "model.entity_weighting='upside'"),
    (["model=egra", "model.graph_source=nope"], "model.graph_source='nope': expected one of"),
    (["model=egra", "model.cross_pairs=maybe"], "model.cross_pairs='maybe': expected true or false"),
    (["model=egra", "model.knn_k=500"], "model.knn_k=500: expected < the 120 items"),
    (["model=egra", "model.modalities=[audio]"], "model.modalities=['audio']: audio not loaded"),
    (["model=mgcn", "model.tau=0"], "model.tau=0"),
    (["model=bpr", "+model.n_layers=2"], "model.n_layers: not an argument of BPRMF"),
    (["model.embedding_dim=0"], "model.embedding_dim=0"),
    (["eval.ks=[0,20]"], "eval.ks=[0, 20]"),
    (["eval.ks=[5,10]"], "needs K=20 in eval.ks"),
    (["optim.optimizer.lr=0"], "optim.optimizer.lr=0: expected a number > 0"),
    (["callbacks.early_stopping.patience=0"], "callbacks.early_stopping.patience=0"),
    (["graph.method=exact"], "graph.method='exact'"),
    (["graph.device=gpu0"], "graph.device='gpu0': expected auto, cpu, cuda or cuda:N"),
    (["threads=0"], "threads=0"),
    (["model=egra", "backbones.mgcn.max_epochs=0"], "backbones.mgcn.max_epochs=0"),
    (["model=egra", "backbones.mgcn.model.cl_loss=-1"], "backbones.mgcn.model.cl_loss=-1"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path='/no/such.ckpt'"),
    (["model=egra", "backbones.mgcn.export=everything"], "backbones.mgcn.export='everything'"),
    (["model=egra", "model.init=pretrained"], "model.init='pretrained': expected one of scratch, backbone"),
    (
        ["model=egra", "model.init=backbone", "model.graph_source=raw_features"],
        "model.init=backbone needs a trained backbone as model.graph_source",
    ),
    (["model=freedom", "model.dropout=1.0"], "model.dropout=1.0: expected a number >= 0 and < 1"),
    (
        ["model=freedom", "model.mm_image_weight=1.5"],
        "model.mm_image_weight=1.5: expected a number >= 0 and <= 1",
    ),
    (["model=freedom", "model.n_mm_layers=-1"], "model.n_mm_layers=-1"),
    (["model=freedom", "model.reg_weight=-1"], "model.reg_weight=-1"),
    (
        ["model=freedom", "model.knn_convention=lattice"],
        "model.knn_convention='lattice': expected one of mgcn, freedom, damrs",
    ),
    (["model=freedom", "model.knn_k=500"], "model.knn_k=500: expected < the 120 items"),
    (["model=freedom", "+model.cl_loss=0.1"], "model.cl_loss: not an argument of FREEDOM"),
    (
        ["model=egra", "model.graph_source=freedom", "backbones.freedom.export=modality"],
        "backbones.freedom.export='modality': expected one of fused, id (FREEDOM's views)",
    ),
    (
        ["model=egra", "model.graph_source=freedom", "backbones.freedom.model.dropout=-0.1"],
        "backbones.freedom.model.dropout=-0.1",
    ),
]


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


@pytest.mark.parametrize(("overrides", "needle"), BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_before_training(shared_root, no_training, capsys, overrides, needle):
    cfg = make_cfg(shared_root, overrides)
    code, err, elapsed = _cli_fails(cfg, capsys)
    assert code == EXIT_CONFIG
    _assert_one_line(err, needle)
    assert err.startswith("egra-train: bad setting: ")
    assert elapsed < 5.0


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
    check_config(make_cfg(tmp_path, ["model=egra", "model.graph_source=none", "model.k_pt=0"]))
    check_config(make_cfg(tmp_path, [], config_name="pretrain"))


class EGRAPlus(EGRA):
    """A model that grew a key (as issue 11's options will): forwards the rest to EGRA."""

    def __init__(self, *, align_gain: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.align_gain = align_gain


def test_a_new_model_key_needs_only_a_rule(tmp_path, monkeypatch):
    """Keys are checked against the constructor (types from its defaults); a range is one
    line in MODEL_RULES."""
    plus = ["model=egra", f"model._target_={__name__}.EGRAPlus"]
    check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=2.0"]))
    with pytest.raises(ConfigError, match="model.align_gain='abc': expected a number$"):
        check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=abc"]))
    with pytest.raises(ConfigError, match="model.lambda_mn: not an argument of EGRAPlus"):
        check_config(make_cfg(tmp_path, [*plus, "+model.lambda_mn=1"]))
    check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=-1"]))
    monkeypatch.setitem(MODEL_RULES, "align_gain", Rule("float", gt=0))
    with pytest.raises(ConfigError, match="model.align_gain=-1: expected a number > 0"):
        check_config(make_cfg(tmp_path, [*plus, "+model.align_gain=-1"]))


@pytest.mark.slow
def test_cli_prints_one_line_and_exit_status(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        "-m",
        "egra.train",
        "model=egra",
        "data.preset=tiny",
        "model.ramp=foo",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == EXIT_CONFIG, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        "egra-train: bad setting: model.ramp='foo': expected one of linear, cosine, step"
    ]
    assert not (tmp_path / "artifacts").exists()


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
