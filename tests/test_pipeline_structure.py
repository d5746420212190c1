"""The shape of the code: stages without import cycles, no neighbour search inside models,
graph keys read by the graph stage, rank helpers, checkpoint graph checks, FAISS fallback."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import egra
from egra.graphs import knn as knn_mod
from egra.pipeline import dist
from egra.pipeline.graph import GRAPH_KEYS, GraphSpec, constructor_config
from egra.training.module import GraphMismatchError, check_graphs

SRC = Path(egra.__file__).parent
SEARCHES = {"knn_graph", "knn_graph_preset", "modality_graphs", "topk_neighbors", "build_index"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether the import sits inside a function) for a source file."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in local) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from egra.pipeline import fit` imports the module egra.pipeline.fit
            out += [(f"{node.module}.{a.name}", id(node) in local) for a in node.names]
            out.append((node.module, id(node) in local))
    return out


def test_pipeline_modules_import_each_other_without_a_cycle():
    modules = {p.stem: p for p in (SRC / "pipeline").glob("*.py") if p.stem != "__init__"}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for mod, in_function in _imports(path):
            parts = mod.split(".")
            if parts[:2] == ["egra", "pipeline"] and len(parts) > 2 and parts[2] in modules:
                assert not in_function, f"pipeline/{name}.py hides an import of {mod} in a function"
                deps.add(parts[2])
        edges[name] = deps - {name}
    assert {"load", "pretrain", "graph", "fit", "evaluate", "train"} <= set(edges)
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in edges[node]:
            assert seen.get(dep) != 1, f"import cycle: {' -> '.join([*path, node, dep])}"
            if dep not in seen:
                visit(dep, [*path, node])
        seen[node] = 2

    for node in edges:
        if node not in seen:
            visit(node, [])
    assert "train" not in set().union(*edges.values())  # the orchestrator is imported by no stage


def test_models_never_search_neighbours():
    for path in (SRC / "models").glob("*.py"):
        for mod, _ in _imports(path):
            assert "faiss" not in mod and not mod.startswith("egra.graphs.knn"), f"{path.name} imports {mod}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in SEARCHES, f"{path.name} calls {name}"


def test_graph_keys_are_stripped_and_model_keys_pass_through():
    model = OmegaConf.create(
        {
            "_target_": "egra.models.EGRA",
            "_partial_": True,
            "knn_k": 7,
            "graph_source": "lightgcn",
            "k_pt": 5,
            "pt_symmetric": False,
            "pt_weighted": True,
            "beta": 0.5,
            "some_future_key": 3,
            "modalities": ["text"],
        }
    )
    ctor = constructor_config(model)
    assert not set(GRAPH_KEYS) & set(ctor)
    assert ctor.beta == 0.5 and ctor.some_future_key == 3 and list(ctor.modalities) == ["text"]
    spec = GraphSpec.of(model)
    assert (spec.knn_k, spec.source, spec.k_pt, spec.symmetric, spec.weighted) == (
        7,
        "lightgcn",
        5,
        False,
        True,
    )
    assert spec.pretrained_source == "lightgcn" and spec.modalities == ("text",)
    assert GraphSpec.of(OmegaConf.create({"graph_source": "none", "k_pt": 5})).pretrained_source is None
    lightgcn = GraphSpec.of(OmegaConf.create({"n_layers": 2}))
    assert lightgcn.knn_k is None and lightgcn.source is None


@pytest.mark.parametrize(
    ("env", "rank", "local"),
    [
        ({}, 0, 0),
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, 1, 1),  # Lightning's launcher
        ({"LOCAL_RANK": "0", "NODE_RANK": "1", "WORLD_SIZE": "4"}, 1, 0),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}, 5, 1),  # srun
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, 0, 0),
        ({"RANK": "3", "LOCAL_RANK": "3"}, 3, 3),  # torchrun
    ],
)
def test_rank_from_the_launchers_environment(monkeypatch, env, rank, local):
    for name in (
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
        "WORLD_SIZE",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
    ):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist.rank() == rank and dist.local_rank() == local
    assert (dist.rank() > 0) == (rank > 0)


def test_which_trainers_rerun_the_command_per_rank(monkeypatch):
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert dist.reruns_per_rank({"strategy": "ddp", "devices": 2})
    assert dist.reruns_per_rank({"strategy": "ddp", "devices": 1, "num_nodes": 2})
    assert not dist.reruns_per_rank({"strategy": "ddp", "devices": 1})
    assert not dist.reruns_per_rank({"strategy": "ddp_spawn", "devices": 2})
    assert not dist.reruns_per_rank({"devices": 1})
    assert dist.reruns_per_rank({"accelerator": "cpu", "devices": 2})  # auto -> Lightning's ddp
    assert dist.reruns_per_rank(
        {"strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy"}, "devices": 2}
    )
    spawn = {"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn"}
    assert not dist.reruns_per_rank({"strategy": spawn, "devices": 2})
    assert not dist.reruns_per_rank({"strategy": "fsdp_spawn", "devices": 2})
    assert dist.reruns_per_rank({"strategy": "fsdp", "devices": 2})
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert dist.reruns_per_rank({"devices": 1})


def test_faiss_device_is_the_ranks_own_or_the_configured_one(monkeypatch):
    monkeypatch.setattr(knn_mod.faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(knn_mod.faiss, "StandardGpuResources", object, raising=False)
    assert knn_mod.rank_device("auto", 0) == "cuda:0"
    assert knn_mod.rank_device("auto", 3) == "cuda:1"
    assert knn_mod.rank_device("cuda:0", 3) == "cuda:0"
    assert knn_mod.rank_device("cpu", 1) == "cpu"
    monkeypatch.setattr(knn_mod.faiss, "get_num_gpus", lambda: 0)
    assert knn_mod.rank_device("auto", 1) == "cpu"


def test_failing_gpu_index_falls_back_to_cpu_with_one_warning(monkeypatch, caplog):
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    want = knn_mod.knn_graph(x, 4, device="cpu")
    real = knn_mod._build_index

    def gpu_fails(x, method, gpu, *args):
        if gpu is not None:
            raise RuntimeError("CUDA out of memory")
        return real(x, method, gpu, *args)

    monkeypatch.setattr(knn_mod, "_resolve_device", lambda device, method: 0)
    monkeypatch.setattr(knn_mod, "_build_index", gpu_fails)
    with caplog.at_level(logging.WARNING, logger="egra.graphs.knn"):
        got = knn_mod.knn_graph(x, 4, device="cuda:0")
    assert (abs(got - want) > 0).nnz == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CUDA out of memory" in warnings[0] and "CPU" in warnings[0]
    assert "\n" not in warnings[0]


def test_checkpoint_graph_names_are_checked():
    a = {"S^pt": {"artifact": "k1", "sha256": "a" * 64}, "S^m/text": {"artifact": "k2", "sha256": "b" * 64}}
    check_graphs(a, a)
    check_graphs(None, a)  # a checkpoint from before graphs were recorded
    with pytest.raises(GraphMismatchError, match="S\\^pt differs"):
        check_graphs(a, {**a, "S^pt": {"artifact": "k3", "sha256": "c" * 64}})
    with pytest.raises(GraphMismatchError, match="does not have"):
        check_graphs(a, {"S^m/text": a["S^m/text"]})
    with pytest.raises(GraphMismatchError, match="not trained on"):
        check_graphs({"S^m/text": a["S^m/text"]}, a)


def _modules_imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_layers_import_only_downwards():
    """The study layer sits on the pipeline; nothing imports the entry points; the pipeline
    never reaches up into the studies."""
    for path in SRC.rglob("*.py"):
        layer = path.relative_to(SRC).parts[0]
        mods = _modules_imported(path)
        if layer not in ("cli", "train.py"):  # egra/train.py: `python -m egra.train`, an entry point
            assert not any(m == "egra.cli" or m.startswith("egra.cli.") for m in mods), path
        if layer in ("pipeline", "training", "models", "graphs", "data", "metrics"):
            assert not any(m.startswith("egra.experiments") for m in mods), path
