"""Bad settings: each ends in one line on stderr and exit status 2, before any stage runs.

The table drives ``egra-train``'s task function in-process (``egra.cli.train.main.__wrapped__``,
what the command runs after Hydra composed the config) with every stage that trains or
builds replaced by a tripwire; a handful go through the real command line, where the line
must come before torch is even imported. bench/bad_settings.py times the same table through
the command line (CPU seconds per setting).

Settings that are allowed but say nothing useful give one warning line instead (the end of
this file).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from egra.cli.errors import EXIT_CONFIG
from tests.conftest import make_cfg

ROOT = Path(__file__).resolve().parents[1]
S = "callbacks.alignment_schedule."

# (overrides, text the line must contain). Keys not mentioned keep the config's defaults; a
# case marked DATA needs the loaded (tiny generated) dataset: it is answered after the load
# stage, before any other.
DATA = "data"
BAD_SETTINGS: list[tuple[list[str], str] | tuple[list[str], str, str]] = [
    # -- the tracebacks and silent accepts of issue 22
    (["data=mmrec"], "data.root: missing; data=mmrec reads an MMRec-format folder"),
    (["trainer.devices=abc"], "trainer.devices='abc': expected a number of devices >= 1"),
    (["trainer.devices=0"], "trainer.devices=0: expected a number of devices >= 1"),
    (["trainer.devices='0'"], "trainer.devices='0': expected"),
    (["trainer.precision=16-true"], "trainer.precision='16-true': expected 32-true, 16-mixed or bf16-mixed"),
    (["trainer.precision=bf16-true"], "16-true and bf16-true are refused"),
    (["trainer.precision=17"], "trainer.precision=17: expected 32-true"),
    (["eval.n_pop_groups=1000"], "eval.n_pop_groups=1000: expected <= ", DATA),
    (["trainer.accelerator=gpu"], "trainer.accelerator=gpu: this machine has no NVIDIA GPU"),
    (["trainer=ddp"], "trainer.accelerator=gpu: this machine has no NVIDIA GPU"),
    (
        ["trainer.accelerator=cuda", "trainer.devices=2"],
        "trainer.accelerator=cuda: this machine has no NVIDIA GPU",
    ),
    (["data.ddp_batch=foo"], "data.ddp_batch='foo': expected one of global, per_rank"),
    (
        ["optim.optimizer._target_=torch.optim.Foo"],
        "optim.optimizer._target_='torch.optim.Foo': torch.optim has no class Foo",
    ),
    (
        ["trainer.check_val_every_n_epoch=5", "trainer.max_epochs=2"],
        "trainer.check_val_every_n_epoch=5 > trainer.max_epochs=2: no validation would run",
    ),
    (
        [
            "model=egra",
            "trainer.check_val_every_n_epoch=3",
            "trainer.max_epochs=9",
            "backbones.mgcn.max_epochs=2",
        ],
        "backbones.mgcn.max_epochs=2: the backbone would never validate",
    ),
    (["optim.optimizer.lr=1e9"], "optim.optimizer.lr=1000000000.0: expected a number > 0 and <= 1"),
    (["+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1: expected a number >= 0 (or null)"),
    (["model=egra", f"{S}lambda_max=1e6"], f"{S}lambda_max=1000000.0: expected a number >= 0 and <= 10"),
    # -- the λ schedule (callbacks.alignment_schedule)
    (["model=egra", f"{S}lambda_min=0.5", f"{S}lambda_max=0.1"], "expected lambda_min <= lambda_max"),
    (["model=egra", f"{S}lambda_min=-1"], f"{S}lambda_min=-1"),
    (["model=egra", f"{S}P=-1"], f"{S}P=-1: expected an integer >= 0"),
    (["model=egra", f"{S}ramp=foo"], f"{S}ramp='foo': expected one of linear, cosine, step"),
    (["model=egra", f"{S}lambda_warmup=1.5"], f"{S}lambda_warmup=1.5: expected an integer >= 0"),
    # -- model: constructor arguments, ranges, keys that belong elsewhere
    (["model=egra", "model.beta=-1"], "model.beta=-1: expected a number >= 0"),
    (["model=egra", "model.tau_u=0"], "model.tau_u=0: expected a number > 0"),
    (
        ["model=egra", "+model.lambda_mn=0.1"],
        "model.lambda_mn: not an argument of EGRA (did you mean callbacks.alignment_schedule.lambda_min?)",
    ),
    (["model=egra", "+model.k_pt=3"], "model.k_pt: not an argument of EGRA (graph.k_pt is the setting)"),
    (
        ["model=egra", "+model.lr_decay=[0.9,10]"],
        "model.lr_decay: not an argument of EGRA (optim.lr_decay is the setting)",
    ),
    (["model=egra", "+model.n_users=5"], "model.n_users: set by the pipeline from the data"),
    (
        ["model=egra", "model.entity_weighting=upside"],
        "model.entity_weighting='upside': expected one of misaligned_up",
    ),
    (["model=egra", "model.cross_pairs=maybe"], "model.cross_pairs='maybe': expected true or false"),
    (["model=egra", "model.align_scale=huge"], "model.align_scale='huge': expected one of raw, chance"),
    (["model=egra", "model.pt_norm=both"], "model.pt_norm='both': expected one of joint, separate"),
    (["model=egra", "model.modalities=[]"], "model.modalities=[]: expected a non-empty list of names"),
    (["model=egra", "model.modalities=[audio]"], "model.modalities=['audio']: audio not loaded", DATA),
    (["model=mgcn", "model.tau=0"], "model.tau=0"),
    (["model=mgcn", "model.cl_loss=-0.1"], "model.cl_loss=-0.1: expected a number >= 0"),
    (["model=bpr", "+model.n_layers=2"], "model.n_layers: not an argument of BPRMF"),
    (["model.embedding_dim=0"], "model.embedding_dim=0: expected an integer >= 1"),
    (["model.n_layers=two"], "model.n_layers='two': expected an integer >= 0"),
    (["model._target_=egra.models.Nope"], "model._target_='egra.models.Nope': egra.models has no class Nope"),
    (["model=freedom", "model.dropout=1.0"], "model.dropout=1.0: expected a number >= 0 and < 1"),
    (
        ["model=freedom", "model.mm_image_weight=1.5"],
        "model.mm_image_weight=1.5: expected a number >= 0 and <= 1",
    ),
    (["model=freedom", "model.n_mm_layers=-1"], "model.n_mm_layers=-1"),
    (["model=freedom", "model.reg_weight=-1"], "model.reg_weight=-1"),
    (["model=freedom", "+model.cl_loss=0.1"], "model.cl_loss: not an argument of FREEDOM"),
    # -- graph: the graphs a model trains on, and the search
    (
        ["model=egra", "graph.k_pt=0"],
        "graph.k_pt=0: expected an integer >= 1 (for no S^pt set graph.graph_source=none)",
    ),
    (["model=egra", "graph.k_pt=500"], "graph.k_pt=500: expected 1 <= k_pt < the 120 items", DATA),
    (["model=egra", "graph.knn_k=500"], "graph.knn_k=500: expected < the 120 items", DATA),
    (["model=egra", "graph.knn_k=null"], "graph.knn_k=null: expected an integer >= 1"),
    (
        ["model=egra", "graph.graph_source=nope"],
        "graph.graph_source='nope': expected one of ",
    ),
    (
        ["model=egra", "graph.graph_source=self", "graph.graph_refresh_every=0"],
        "graph.graph_refresh_every=0: expected an integer >= 1",
    ),
    (
        ["model=egra", "graph.graph_init=later"],
        "graph.graph_init='later': expected one of raw_features, warmup",
    ),
    (["model=egra", "graph.pt_weighted=1"], "graph.pt_weighted=1: expected true or false"),
    (["model=lightgcn", "+graph.k_pt=3"], "graph.k_pt=3: LightGCN takes no such graph"),
    (
        ["model=freedom", "graph.knn_convention=lattice"],
        "graph.knn_convention='lattice': expected one of mgcn, freedom",
    ),
    (["model=freedom", "graph.knn_k=500"], "graph.knn_k=500: expected < the 120 items", DATA),
    (["graph.method=exact"], "graph.method='exact': expected one of flat, flat_sym, ivf, hnsw"),
    (["graph.device=gpu0"], "graph.device='gpu0': expected auto, cpu, cuda or cuda:N"),
    (["graph.nprobe=0"], "graph.nprobe=0: expected an integer >= 1"),
    (["+graph.knn=5"], "graph.knn: not a setting of graph (did you mean knn_k?)"),
    # -- data
    (["data.eval_batch_size=0"], "data.eval_batch_size=0"),
    (["data.preset=huge"], "data.preset='huge': expected one of tiny, small"),
    (["data.batch_size=0"], "data.batch_size=0: expected an integer >= 1"),
    (["data.modalities=[]"], "data.modalities=[]: expected a non-empty list of modality names"),
    (["data.seed=abc"], "data.seed='abc': expected an integer"),
    (["+data.batchsize=10"], "data.batchsize: not a setting of data (did you mean batch_size?)"),
    # -- optimizer and recipe
    (["optim.optimizer.lr=0"], "optim.optimizer.lr=0: expected a number > 0"),
    (["optim.optimizer.weight_decay=-0.1"], "optim.optimizer.weight_decay=-0.1: expected a number >= 0"),
    (["+optim.optimizer.lrr=0.1"], "optim.optimizer.lrr: not an argument of Adam (did you mean lr?)"),
    (["optim.lr_decay=[0.96]"], "optim.lr_decay=[0.96]"),
    (["model=egra", "optim.init=pretrained"], "optim.init='pretrained': expected one of scratch, backbone"),
    (
        ["model=egra", "optim.init=backbone", "graph.graph_source=raw_features"],
        "optim.init=backbone needs a trained backbone as graph.graph_source",
    ),
    # -- trainer
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc': expected an integer >= 1"),
    (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5"),
    (["+trainer.num_nodes=0"], "trainer.num_nodes=0"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu': expected one of cpu, gpu, cuda, mps, auto"),
    (["+trainer.strategy=foo"], "trainer.strategy='foo': expected auto, ddp, ddp_spawn"),
    (
        ["+trainer.gradient_clip_algorithm=foo"],
        "trainer.gradient_clip_algorithm='foo': expected one of norm, value",
    ),
    (["+trainer.max_epoch=3"], "trainer.max_epoch: not an argument of Trainer (did you mean max_epochs?)"),
    # -- evaluation and callbacks
    (["eval.ks=[0,20]"], "eval.ks=[0, 20]: expected a non-empty list of integers, each >= 1"),
    (["eval.ks=[5,10]", "eval.group_ks=[5]"], "needs K=20 in eval.ks"),
    (["eval.group_ks=[30]"], "eval.group_ks=[30]: expected a subset of eval.ks"),
    (["eval.n_pop_groups=0"], "eval.n_pop_groups=0: expected an integer >= 1"),
    (["callbacks.early_stopping.patience=0"], "callbacks.early_stopping.patience=0"),
    (
        ["+callbacks.early_stopping.patiance=3"],
        "callbacks.early_stopping.patiance: not an argument of EarlyStopping (did you mean patience?)",
    ),
    (["callbacks.collapse_guard.patience=0"], "callbacks.collapse_guard.patience=0"),
    # -- backbones
    (["model=egra", "backbones.mgcn.max_epochs=0"], "backbones.mgcn.max_epochs=0: expected an integer >= 1"),
    (["model=egra", "backbones.mgcn.model.cl_loss=-1"], "backbones.mgcn.model.cl_loss=-1"),
    (["model=egra", "backbones.mgcn.export=everything"], "backbones.mgcn.export='everything'"),
    (
        ["model=egra", "backbones.mgcn.weights=final"],
        "backbones.mgcn.weights='final': expected one of best, last",
    ),
    (
        ["model=egra", "graph.graph_source=freedom", "backbones.freedom.export=modality"],
        "backbones.freedom.export='modality': expected one of fused, id (FREEDOM's views)",
    ),
    (
        ["model=egra", "graph.graph_source=freedom", "backbones.freedom.model.dropout=-0.1"],
        "backbones.freedom.model.dropout=-0.1",
    ),
    # -- the run
    (["threads=0"], "threads=0: expected an integer >= 1 (or null)"),
    (["seed=1.5"], "seed=1.5: expected an integer"),
    (
        ["ckpt_path=/no/such.ckpt"],
        "ckpt_path='/no/such.ckpt': expected null, 'last' or an existing checkpoint file",
    ),
]


def _case_id(case) -> str:
    return " ".join(case[0])


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_settings")


@pytest.fixture
def no_stage(monkeypatch):
    """Every stage after the load raises: a case that reaches one fails the test."""
    import egra.pipeline.fit as fit
    import egra.pipeline.graph as graph
    import egra.pipeline.pretrain as pretrain

    def tripwire(*args, **kwargs):
        raise AssertionError("a stage started before the bad setting was reported")

    for mod, name in ((fit, "fit"), (fit, "build_net"), (graph, "build_graphs"), (pretrain, "pretrain")):
        monkeypatch.setattr(mod, name, tripwire)
    monkeypatch.setattr(pretrain, "build_graphs", tripwire)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def test_the_table_is_long_enough():
    assert len(BAD_SETTINGS) >= 60
    assert len({_case_id(c) for c in BAD_SETTINGS}) == len(BAD_SETTINGS)


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=_case_id)
def test_bad_setting_is_one_line_and_exit_2(shared_root, no_stage, capsys, case):
    from egra.cli.train import main

    overrides, needle = case[0], case[1]
    tiny = not any(o.startswith("data=") for o in overrides)
    cfg = make_cfg(shared_root, overrides, tiny=tiny)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main.__wrapped__(cfg)
    err = capsys.readouterr().err
    assert info.value.code == EXIT_CONFIG, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("egra-train: bad setting: "), lines[0]
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def _cli(args: list[str], tmp_path: Path, prog: str = "egra.train") -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        "-m",
        prog,
        *args,
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args",
    [
        ["data=mmrec"],
        ["trainer.accelerator=gpu"],
        ["model=egra", "callbacks.alignment_schedule.ramp=foo"],
        ["optim.optimizer._target_=torch.optim.Foo"],
        # keys that moved out of `model` (Hydra alone would print its own multi-line error)
        ["model=egra", "model.lambda_max=0.1"],
        ["model=egra", "model.graph_source=lgmrec"],
        ["model=freedom", "model.knn_k=5"],
        ["model=mgcn", "model.lr_decay=0.9"],
    ],
    ids=" ".join,
)
def test_the_command_line_prints_the_line_alone_and_writes_nothing(tmp_path, args):
    out = _cli(args, tmp_path)
    assert out.returncode == EXIT_CONFIG, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egra-train: bad setting: "), out.stderr[-3000:]
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "data").exists()


def test_a_bad_setting_is_answered_before_torch_is_imported(tmp_path):
    """What makes the answer fast: the check reads the config and the classes' source only."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.argv = ["egra-train", "model=egra", "+model.lambda_mn=0.1", "paths.root_dir={tmp_path}",
                    "hydra.run.dir={tmp_path / "run"}"]
        from egra.cli.train import main
        try:
            main()
        except SystemExit as e:
            print("exit", e.code, "torch" in sys.modules, "lightning" in sys.modules)
        """
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "exit 2 False False", out.stdout + out.stderr[-2000:]


# -- allowed, with one warning line ----------------------------------------------------------
def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_large_k_is_one_warning_line(shared_root, no_stage, caplog):
    """K >= the catalogue: allowed (the run's other K still say something), one warning."""
    from egra.cli.train import main

    cfg = make_cfg(shared_root, ["eval.ks=[10,20,500]"])
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="a stage started"):
        main.__wrapped__(cfg)  # the checks pass; the tripwire of the first stage fires
    (line,) = [w for w in _warnings(caplog) if "eval.ks" in w]
    assert "K=500 >= the 120 items of synthetic-tiny-s0" in line and "\n" not in line


@pytest.mark.slow
def test_16_mixed_on_a_cpu_is_one_warning_line_once(cfg_factory, caplog, capsys):
    """Lightning switches to bf16 and says so per Trainer; the check says it once, by key."""
    from egra.cli.console import quiet_console
    from egra.cli.train import main

    cfg = cfg_factory(["model=lightgcn", "trainer.max_epochs=1", "trainer.precision=16-mixed"])
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    root.addHandler(handler)
    try:
        quiet_console()
        main.__wrapped__(cfg)
    finally:
        root.removeHandler(handler)
    printed = capsys.readouterr()
    lines = [line for line in (printed.out + printed.err).splitlines() if "16-mixed" in line]
    assert len(lines) == 1 and lines[0].startswith("trainer.precision=16-mixed on a CPU"), lines


def test_moved_keys_are_no_built_in_models_argument():
    """The command-line check refuses ``model.<key>`` for a key of another group, so no model
    of the suite may take one of those keys itself."""
    from egra.pipeline.checks import _elsewhere, moved_model_keys
    from egra.pipeline.signatures import signature

    targets = sorted(
        {OmegaConf.load(p).get("_target_") for p in (ROOT / "conf" / "model").glob("*.yaml")} - {None}
    )
    assert len(targets) >= 6
    for target in targets:
        assert not set(signature(target).params) & set(_elsewhere()), target
    assert moved_model_keys(["+model.lambda_max=1", "model.beta=1", "graph.knn_k=3"]) == []
    assert moved_model_keys(["model.knn_k=3"]) == [
        "model.knn_k: not a model argument; graph.knn_k is the setting"
    ]
