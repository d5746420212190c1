"""FAISS on a GPU only where its build has kernels for that GPU, checked before any GPU code runs;
the artifact key of an approximate graph says whether a GPU built it (egra.graphs.knn,
egra.graphs.cuda_arch, egra.pipeline.graph). No GPU here: devices and libraries are mocked."""

from __future__ import annotations

import logging
import struct

import faiss
import numpy as np
import pytest

from egra.graphs import knn
from egra.graphs.cuda_arch import FATBIN_MAGIC, KernelArchs, fatbin_archs, library_archs, parse_arch_list
from egra.pipeline import graph as graph_stage

# faiss-gpu-cu12 1.14.1.post1: machine code for 7.0-8.9 and no PTX (its documented range).
CU12_WHEEL = KernelArchs(sass=frozenset({70, 75, 80, 86, 89}))


def _entry(kind: int, arch: int, payload: bytes) -> bytes:
    header = struct.pack("<HHIQ", kind, 0x0101, 64, len(payload)) + bytes(12)
    header += struct.pack("<I", arch)
    return header + bytes(64 - len(header)) + payload


def _fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return FATBIN_MAGIC + struct.pack("<HHQ", 1, 16, len(body)) + body


def test_fat_binary_entries_give_the_architectures(tmp_path):
    blob = (
        b"\x7fELF" + bytes(100)
        + FATBIN_MAGIC + b"not a header"  # the magic by chance
        + _fatbin(_entry(2, 70, b"sass" * 10), _entry(2, 80, b"x" * 7), _entry(1, 80, b"ptx"))
        + bytes(33)
        + _fatbin(_entry(2, 90, b"y" * 5))
    )  # fmt: skip
    archs = fatbin_archs(blob)
    assert archs == KernelArchs(sass=frozenset({70, 80, 90}), ptx=frozenset({80}))
    lib = tmp_path / "libfake.so"
    lib.write_bytes(blob)
    assert library_archs([lib]) == archs
    assert fatbin_archs(b"no cuda here" * 50) == KernelArchs() and not KernelArchs()


@pytest.mark.parametrize(
    ("archs", "capability", "runs"),
    [
        (CU12_WHEEL, (8, 0), True),
        (CU12_WHEEL, (8, 9), True),
        (CU12_WHEEL, (9, 0), False),  # Hopper: no sm_90 code, no PTX to compile
        (KernelArchs(sass=frozenset({80, 86})), (8, 9), True),  # sm_86 code runs on 8.9
        (KernelArchs(sass=frozenset({86})), (8, 0), False),  # but not on a lower minor
        (KernelArchs(sass=frozenset({70}), ptx=frozenset({90})), (10, 0), True),  # PTX compiles forward
        (KernelArchs(ptx=frozenset({90})), (8, 6), False),  # never backward
        (KernelArchs(exact=frozenset({90})), (9, 0), True),
        (KernelArchs(exact=frozenset({90})), (9, 1), False),
    ],
)
def test_kernel_image_rules(archs, capability, runs):
    assert archs.runs_on(capability) is runs


def test_torch_arch_names():
    archs = parse_arch_list(["sm_75", "sm_80", "sm_86", "sm_90a", "compute_120", "gfx90a"])
    assert archs == KernelArchs(frozenset({75, 80, 86}), frozenset({120}), frozenset({90}))
    assert archs.describe() == "sm_75, sm_80, sm_86, sm_90a, compute_120"


@pytest.fixture
def fake_gpu(monkeypatch):
    """FAISS 'sees' one GPU; any FAISS GPU call fails the test (the real one would abort())."""

    def gpu_code_ran(*args, **kwargs):
        raise AssertionError("FAISS GPU code ran")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", gpu_code_ran, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", gpu_code_ran, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexFlatConfig", gpu_code_ran, raising=False)
    knn._warn_once.cache_clear()
    yield monkeypatch
    knn._warn_once.cache_clear()


def test_unsupported_compute_capability_uses_the_cpu_with_one_line(fake_gpu, caplog):
    fake_gpu.setattr(knn, "_device_capability", lambda gpu: (9, 0))  # an H100/H200
    fake_gpu.setattr(knn, "faiss_kernel_archs", lambda: CU12_WHEEL)
    x = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="egra.graphs.knn"):
        idx, sim = knn.topk_neighbors(x, 4, device="auto")
        knn.knn_graph(x, 4, device="cuda")
        assert knn.rank_device("auto", local_rank=0) == "cpu"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1, lines  # once per process, not once per graph
    assert "compute capability 9.0" in lines[0] and "sm_89" in lines[0] and "CPU" in lines[0]
    ref_idx, ref_sim = knn.topk_neighbors(x, 4, device="cpu")
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sim, ref_sim)


def test_a_supported_gpu_is_used_and_an_unknown_build_is_not(fake_gpu):
    real_archs = knn.faiss_kernel_archs
    fake_gpu.setattr(knn, "_device_capability", lambda gpu: (8, 0))
    fake_gpu.setattr(knn, "faiss_kernel_archs", lambda: CU12_WHEEL)
    assert knn.resolve_device("auto") == "cuda:0"
    assert knn.rank_device("auto", local_rank=3) == "cuda:0"
    assert knn.resolve_device("auto", method="hnsw") == "cpu"  # FAISS has no GPU HNSW
    # The libraries actually loaded here (faiss-cpu) hold no GPU code: never a GPU.
    fake_gpu.setattr(knn, "faiss_kernel_archs", real_archs)
    assert "no GPU kernels found" in knn.faiss_gpu_problem(0)
    # No GPU visible to torch: the capability is unknown, so no GPU either.
    fake_gpu.setattr(knn, "_device_capability", lambda gpu: None)
    assert "torch sees no CUDA device 0" in knn.faiss_gpu_problem(0)


def test_ivf_on_a_gpu_trains_with_our_seed(fake_gpu):
    """A GPU copy of an untrained IVF index that drops the clustering parameters (as a
    conversion may) still trains with graph.seed: they are set on the index that trains."""
    fake_gpu.setattr(knn, "faiss_gpu_problem", lambda gpu: None)
    fake_gpu.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    keep = []

    def to_gpu(res, gpu, index):  # a fresh index with FAISS's default clustering parameters
        quantizer = faiss.IndexFlatIP(index.d)
        keep.append(quantizer)
        return faiss.IndexIVFFlat(quantizer, index.d, index.nlist, faiss.METRIC_INNER_PRODUCT)

    fake_gpu.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    x = np.random.default_rng(1).standard_normal((800, 8)).astype(np.float32)
    built = knn.build_index(x, method="ivf", device="cuda", nlist=12, seed=7)
    assert built.device == "cuda:0" and built.index.cp.seed == 7 and built.index.cp.spherical
    on_cpu = knn.build_index(x, method="ivf", device="cpu", nlist=12, seed=7)
    np.testing.assert_array_equal(
        knn.search_index(built, x, 5, nprobe=2)[0], knn.search_index(on_cpu, x, 5, nprobe=2)[0]
    )


def test_graph_key_names_the_device_only_where_it_changes_the_graph(monkeypatch):
    opts = {"method": "ivf", "device": "auto", "chunk_size": 4096, "nlist": None, "nprobe": 32}
    opts |= {"hnsw_m": 32, "ef_search": 128, "ef_construction": 200, "seed": 0}
    monkeypatch.setattr(graph_stage, "resolve_device", lambda device, method: "cpu")
    cpu_ivf = graph_stage._search_key(opts)
    cpu_flat = graph_stage._search_key({**opts, "method": "flat"})
    assert graph_stage._search_key({**opts, "seed": 1}) != cpu_ivf  # the seed counts
    assert graph_stage._search_key({**opts, "chunk_size": 7}) == cpu_ivf  # chunking does not
    assert "device" not in cpu_ivf["search"]  # CPU keys as before the device counted
    monkeypatch.setattr(graph_stage, "resolve_device", lambda device, method: "cuda:1")
    gpu_ivf = graph_stage._search_key(opts)
    assert gpu_ivf != cpu_ivf and gpu_ivf["search"]["device"] == "gpu"
    assert graph_stage._search_key({**opts, "device": "cuda:0"}) == gpu_ivf  # which GPU does not
    assert graph_stage._search_key({**opts, "method": "flat"}) == cpu_flat == {"search": "exact"}
