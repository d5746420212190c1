"""egra-report (the study layer's collect → aggregate → render): fake multirun directories with
hand-written metrics, plus one real tiny sweep."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from omegaconf import open_dict

from egra.cli.report import main
from egra.experiments.aggregate import summarize
from egra.experiments.collect import collect, parse_overrides
from egra.experiments.render import numeric_params, sensitivity_table, summary_table, use_log_x
from egra.experiments.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIXED = ["model=egra", "data.preset=tiny", "paths.root_dir=/somewhere", "hydra.verbose=true"]
LMIN = (0.001, 0.01)
LMAX = (0.1, 1.0)
PS = (5, 10)


def write_job(job_dir: Path, overrides: list[str], metrics: dict | None) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics))


def grid_metrics(i: int, j: int, k: int, seed_shift: float = 0.0) -> dict:
    """Recall@20 = 0.2 + 0.1·i + 0.01·j + 0.001·k (+ shift): means are easy to do by hand."""
    r20 = 0.2 + 0.1 * i + 0.01 * j + 0.001 * k + seed_shift
    return {
        "test/Recall@10": r20 / 2,
        "test/Recall@20": r20,
        "test/NDCG@10": r20 / 8,
        "test/NDCG@20": r20 / 4,
        "valid/Recall@20": r20 + 0.05,
        "test/popgroup0/Recall@20": 0.05 + 0.01 * i,
        "test/popgroup1/Recall@20": 0.15,
        "test/popgroup2/Recall@20": 0.25 + seed_shift,
        "test/popgroup0/NDCG@20": 0.02,
        "test/popgroup1/NDCG@20": 0.04,
        "test/popgroup2/NDCG@20": 0.06,
        "best_epoch": 3,
        "model": "EGRA",
        "seed": 7,
    }


def make_grid(root: Path, seeds: tuple[int, ...] = (7,)) -> Path:
    """A 2×2×2 grid of lambda_min × lambda_max × P, each for every seed, numbered like Hydra."""
    n = 0
    for (i, a), (j, b), (k, p) in itertools.product(enumerate(LMIN), enumerate(LMAX), enumerate(PS)):
        for s_idx, seed in enumerate(seeds):
            ov = [*FIXED, f"model.lambda_min={a}", f"model.lambda_max={b}", f"model.P={p}", f"seed={seed}"]
            write_job(root / str(n), ov, grid_metrics(i, j, k, seed_shift=0.1 * s_idx) | {"seed": seed})
            n += 1
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the Markdown table, as stripped cells (bold marks removed)."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    cells = [[c.strip().strip("*") for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def table_rows(markdown: str) -> list[list[str]]:
    return table(markdown)[1]


def assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_overrides_are_read_by_hydras_parser():
    assert parse_overrides(["model.lambda_min=0.001", "model.P=10", "+trainer.max_epochs=1e2"]) == {
        "model.lambda_min": 0.001,
        "model.P": 10,
        "trainer.max_epochs": 100.0,
    }
    assert parse_overrides(["++model.pt_weighted=true", "model.modalities=null", "tags='a b'"]) == {
        "model.pt_weighted": True,
        "model.modalities": None,
        "tags": "a b",
    }
    assert parse_overrides(["~model.beta", "hydra.run.dir=/x", "paths.root_dir=/x"]) == {"model.beta": "~"}
    assert parse_overrides(["seed=1", "model=bpr", "seed=2"]) == {"seed": 2, "model": "bpr"}


def test_grid_one_seed(tmp_path):
    root = make_grid(tmp_path / "multirun")
    report = write_report(root)
    assert report.out_dir == root

    rows = read_csv(root / "results.csv")
    assert len(rows) == 8
    header = list(rows[0])
    # Override columns first (hydra.* and paths.* dropped), then metrics; metrics.json's
    # "model"/"seed" do not overwrite the overrides of the same name.
    assert header[:9] == [
        "job",
        "status",
        "model",
        "data.preset",
        "model.lambda_min",
        "model.lambda_max",
        "model.P",
        "seed",
        "data.seed",
    ]
    assert "paths.root_dir" not in header and "hydra.verbose" not in header
    assert header.index("test/Recall@20") > header.index("seed")
    assert {r["metrics.model"] for r in rows} == {"EGRA"} and {r["model"] for r in rows} == {"egra"}
    assert [r["job"] for r in rows] == [str(n) for n in range(8)]
    assert float(rows[5]["test/Recall@20"]) == pytest.approx(0.2 + 0.1 + 0.0 + 0.001)

    body = table_rows((root / "report.md").read_text())
    assert len(body) == 8
    # One seed: mean only, no "±" (the std of one value is undefined, not 0); seeds column = 1.
    # Row 3 is (0.001, 1.0, 10).
    assert body[3][:3] == ["0.001", "1", "10"]
    assert body[3][4] == "0.2110" and body[3][-2:] == ["1 ok", "1"]
    # The best mean of each column is bold.
    assert "**0.3110**" in (root / "report.md").read_text()

    names = sorted(p.name for p in report.plots)
    assert names == [
        "long_tail.png",
        "sensitivity_model_P.png",
        "sensitivity_model_lambda_max.png",
        "sensitivity_model_lambda_min.png",
    ]
    for p in report.plots:
        assert_png(p)
    assert report.failed == []
    assert "long_tail.png" in (root / "report.md").read_text()


def test_grid_two_seeds_mean_std(tmp_path, capsys):
    root = make_grid(tmp_path / "mr", seeds=(1, 2))
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    assert len(read_csv(out / "results.csv")) == 16
    assert not (root / "results.csv").exists()
    header, body = table((out / "report.md").read_text())
    assert len(body) == 8
    # (0.01, 0.1, 5): seed 1 -> 0.3, seed 2 -> 0.4: mean 0.35, sample std sqrt(2·0.05²) = 0.0707.
    row = body[4]
    assert row[:3] == ["0.01", "0.1", "5"]
    cells = dict(zip(header, row))
    assert cells["test/Recall@20"] == "0.3500 ± 0.0707"
    assert cells["test/NDCG@20"] == "0.0875 ± 0.0177"
    assert cells["valid/Recall@20"] == "0.4000 ± 0.0707"
    assert cells["test/popgroup0/Recall@20"] == "0.0600 ± 0.0000"
    assert cells["seeds"] == "2"
    assert "seed" not in header
    # The table is printed too.
    assert "0.3500 ± 0.0707" in printed
    for p in out.glob("*.png"):
        assert_png(p)
    assert len(list(out.glob("sensitivity_*.png"))) == 3


def test_summary_and_sensitivity_numbers(tmp_path):
    frame = collect(make_grid(tmp_path / "mr", seeds=(1, 2)))
    assert numeric_params(frame) == ["model.lambda_min", "model.lambda_max", "model.P"]
    summary = summarize(frame, ["test/Recall@20"])
    assert list(summary.columns) == [
        "model.lambda_min",
        "model.lambda_max",
        "model.P",
        "test/Recall@20 mean",
        "test/Recall@20 std",
        "test/Recall@20 n",
        "runs",
        "seeds",
        "jobs",
    ]
    assert summary["test/Recall@20 mean"].iloc[0] == pytest.approx(0.25)
    assert summary["test/Recall@20 std"].iloc[0] == pytest.approx(math.sqrt(0.005))
    assert summary["jobs"].iloc[0] == "0, 1"

    # lambda_min = 0.001 over lambda_max × P × seeds: 0.2 + {0, .001, .01, .011} + {0, .1}.
    sens = sensitivity_table(frame, "model.lambda_min")
    vals = [0.2, 0.201, 0.21, 0.211, 0.3, 0.301, 0.31, 0.311]
    mean = sum(vals) / 8
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 7)
    assert list(sens["model.lambda_min"]) == [0.001, 0.01]
    assert sens["test/Recall@20 mean"].iloc[0] == pytest.approx(0.25550)
    assert sens["test/Recall@20 mean"].iloc[0] == pytest.approx(mean)
    assert sens["test/Recall@20 std"].iloc[0] == pytest.approx(std)
    assert sens["test/Recall@20 mean"].iloc[1] == pytest.approx(0.35550)
    assert list(sens["test/Recall@20 n"]) == [8, 8]
    assert use_log_x("model.lambda_min", [0.001, 0.01])
    assert not use_log_x("model.P", [5, 10])


def test_failed_and_not_started_jobs(tmp_path, capsys):
    root = tmp_path / "mr"
    write_job(root / "0", ["model=bpr", "seed=1"], {"test/Recall@20": 0.1, "test/NDCG@20": 0.05})
    write_job(root / "1", ["model=bpr", "seed=2"], {"test/Recall@20": 0.3, "test/NDCG@20": 0.07})
    write_job(root / "2", ["model=lightgcn", "seed=1"], None)
    (root / "2" / "train.log").write_text("Traceback ...\n")
    (root / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
                    "overrides": {"task": ["model=bpr,lightgcn", "seed=1,2"]},
                }
            }
        )
    )
    assert main([str(root), "--no-plots", "--metrics", "Recall@20,test/NDCG@20"]) == 0
    printed = capsys.readouterr().out
    assert "job 2 (model=lightgcn seed=1): no metrics.json" in printed
    assert "not started (model=lightgcn seed=2)" in printed

    rows = read_csv(root / "results.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok"), ("2", "missing")]
    md = (root / "report.md").read_text()
    assert "## Failed / missing jobs" in md and "train.log" in md
    assert "Made by: `egra-train -m model=bpr,lightgcn seed=1,2`" in md  # from multirun.yaml
    body = table_rows(md)
    assert body == [
        ["bpr", "0.2000 ± 0.1414", "0.0600 ± 0.0141", "2 ok", "2"],
        ["lightgcn", "", "", "1 missing", "0"],
    ]


def test_no_jobs_exits_nonzero(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no jobs" in capsys.readouterr().err
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_all_failed_exits_one(tmp_path):
    write_job(tmp_path / "mr" / "0", ["model=bpr"], None)
    assert main([str(tmp_path / "mr")]) == 1
    assert "| all jobs | 1 missing | 0 |" in (tmp_path / "mr" / "report.md").read_text()


def test_several_dirs(tmp_path):
    a = make_grid(tmp_path / "a")
    b = tmp_path / "b"
    write_job(b / "0", ["model=lightgcn", "seed=3"], {"test/Recall@20": 0.5, "test/NDCG@20": 0.1})
    report = write_report([a, b], out=tmp_path / "out", metrics=["test/Recall@20"])
    assert len(report.results) == 9
    assert report.results["job"].iloc[-1] == "b/0"
    # lambda params are missing for b's job: its own configuration row.
    assert len(table_rows(report.markdown)) == 9
    assert summary_table(summarize(report.results, ["test/Recall@20"])) == report.table


def test_real_tiny_sweep(cfg_factory, tmp_path, capsys):
    """Two real 1-epoch jobs laid out like a multirun, then the report."""
    from egra.pipeline.train import run

    sweep = tmp_path / "sweep"
    for n, model in enumerate(["bpr", "lightgcn"]):
        overrides = [f"model={model}", "trainer.max_epochs=1"]
        cfg = cfg_factory(overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(sweep / str(n))
        write_job(sweep / str(n), overrides, None)
        run(cfg)
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    body = table_rows((sweep / "report.md").read_text())
    assert [r[0] for r in body] == ["bpr", "lightgcn"]
    assert all(r[-1] == "1" for r in body)
    assert "test/popgroup0/Recall@20" in printed
    assert_png(sweep / "long_tail.png")
    assert not list(sweep.glob("sensitivity_*.png"))
    assert "sensitivity curves: no swept numeric setting" in (sweep / "report.md").read_text()


def test_rows_follow_the_swept_values_and_failures_point_to_error_txt(tmp_path, capsys):
    """A grid ``k_pt=500,3,5`` lists 3, 5, 500 (not the job order); a failed job names its
    error.txt, which holds the failure, rather than the job log."""
    root = tmp_path / "mr"
    for n, k in enumerate([500, 3, 5]):
        write_job(root / str(n), [f"model.k_pt={k}"], {"test/Recall@20": k / 1000, "test/NDCG@20": 0.01})
    write_job(root / "3", ["model.k_pt=7"], None)
    (root / "3" / "train.log").write_text("log lines\n")
    (root / "3" / "error.txt").write_text("job 3: model.k_pt=7\n\nbad setting: ...\n")
    assert main([str(root), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(root / "results.csv")
    assert [(r["job"], r["model.k_pt"]) for r in rows] == [("1", "3"), ("2", "5"), ("3", "7"), ("0", "500")]
    assert f"see {root / '3' / 'error.txt'}" in printed


def test_categorical_sweep_gets_a_bar_chart_per_choice(tmp_path):
    """hparams_search=backbones: model.graph_source is a choice, not a number: one bar per value."""
    from egra.experiments.render import choice_params, plot_choice

    root = tmp_path / "backbones"
    sources = ["mgcn", "freedom", "lightgcn", "raw_features", "random"]
    n = 0
    for i, src in enumerate(sources):
        for seed in (1, 2):
            ov = [*FIXED, f"model.graph_source={src}", f"seed={seed}"]
            write_job(root / str(n), ov, grid_metrics(i, 0, 0, seed_shift=0.01 * seed) | {"seed": seed})
            n += 1
    report = write_report(root)
    assert [p.name for p in report.plots if p.name.startswith("choice_")] == ["choice_model_graph_source.png"]
    assert_png(root / "choice_model_graph_source.png")
    frame = collect(root)
    assert choice_params(frame) == ["model.graph_source"] and numeric_params(frame) == []
    fig = plot_choice(frame, "model.graph_source")
    ax = fig.axes[0]
    heights = {t.get_text(): b.get_height() for t, b in zip(ax.get_xticklabels(), ax.patches)}
    # Mean over the two seeds: 0.2 + 0.1·i + 0.015.
    assert heights == pytest.approx({s: 0.215 + 0.1 * i for i, s in enumerate(sources)})
