"""The pipeline of ``egra-train``, one stage after the other:

    load -> pretrain -> graph -> fit -> evaluate -> report

* **load** (``egra.pipeline.load``): threads, seed, the dataset;
* **pretrain** (``egra.pipeline.pretrain``): for a model trained on ``S^pt`` (EGRA), the
  backbone's embedding artifact (its own graphs ``S^m`` come from the graph stage first);
* **graph** (``egra.pipeline.graph``): every graph the model needs (``S^m``, ``S^pt``),
  as cached artifacts, handed to the model's constructor (``graph_source=self``: also the
  callback that rebuilds ``S^pt`` from the model's own vectors during the fit). The graphs
  of the data are built before the backbone's fit, ``S^pt`` from its vectors after it;
* **fit** (``egra.pipeline.fit``): Lightning fit with early stopping and checkpoints;
* **evaluate** (``egra.pipeline.evaluate``): valid and test on the best checkpoint;
* **report** (``egra.pipeline.tables.report``): ``metrics.json`` and the tables, on rank 0.

Under a DDP launcher that re-runs the command per rank (``trainer=ddp``, ``srun``) every
rank runs this function: the artifact cache makes one rank build each artifact (or all
ranks train a backbone together) and only rank 0 reports.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from egra.pipeline import dist, evaluate, fit, graph, load, pretrain, tables
from egra.pipeline.checks import check_config, check_data
from egra.pipeline.fingerprint import HASH_KEY, check_resume, config_hash, finished_run, record_config

log = logging.getLogger(__name__)


def pretrain_stage(
    cfg: DictConfig, dm, spec: graph.GraphSpec, known: graph.Graphs | None = None
) -> tuple[Any, dict[str, Any]]:
    """The embedding artifact ``S^pt`` is built from (None when the model needs none) and
    what was done, for metrics.json. ``known``: graphs the run built already (the model's),
    which the backbone's graph stage takes instead of looking them up again."""
    source = spec.pretrained_source
    if source is None:
        return None, {}
    t0 = time.perf_counter()
    bspec = pretrain.backbone_spec(cfg, source)
    bgraphs = graph.build_graphs(cfg, dm, bspec, known=known) if bspec is not None else None
    emb = pretrain.pretrain(cfg, dm, source, bgraphs)
    # Training a backbone consumes the global RNGs, reusing its cached artifact does not:
    # re-seed so the model starts the same either way (sweeps and resumed runs reuse it).
    L.seed_everything(int(cfg.seed), workers=True)
    info = {
        "pretrain_artifact": str(emb.path),
        "pretrain_reused": emb.reused,
        "pretrain_s": round(time.perf_counter() - t0, 3),
    }
    return emb, info


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` through every stage; return ``metrics.json``'s content."""
    started = time.perf_counter()
    check_config(cfg)  # issue 13 hook: every setting checked before any stage
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("skip_if_done", False) and cfg.get("ckpt_path") in (None, ""):
        done = finished_run(cfg, out_dir)  # issue 13 hook: reuse only a run of this config
        if done is not None:
            return done
    check_resume(cfg, out_dir)  # issue 13 hook: a resume keeps the model, data and seed
    if dist.rank() == 0:
        record_config(cfg, out_dir)  # issue 13 hook: what a later resume compares against
    load.setup_run(cfg)
    dm = load.load_data(cfg)
    check_data(cfg, dm)  # issue 13 hook: size- and feature-dependent settings, before pretraining
    spec = graph.GraphSpec.of(cfg.graph, cfg.model)
    # The graphs of the data before the backbone's fit, S^pt (from the backbone) after it: under
    # DDP no FAISS build on rank 0 then holds the other ranks at a barrier between two fits.
    graphs = graph.build_graphs(cfg, dm, spec, pretrained=False)
    backbone, stage_info = pretrain_stage(cfg, dm, spec, known=graphs)
    graph.add_pretrained(graphs, cfg, backbone)
    net = fit.build_net(cfg.model, dm, graphs.model_inputs())
    if cfg.optim.get("init", "scratch") == "backbone":
        stage_info["init_tensors"] = len(fit.warm_start(net, pretrain.backbone_state(backbone), spec.source))
    module = fit.build_module(cfg, dm, net, graphs.names())
    refresh = graph.refresh_callback(cfg, spec)  # graph_source=self: S^pt rebuilt while training
    fitted = fit.fit(cfg, dm, module, out_dir, callbacks=[refresh] if refresh else [])
    info = {**stage_info, **graphs.info, **(refresh.summary() if refresh else {})}
    metrics = evaluate.evaluate(cfg, dm, fitted, info, started=started)
    metrics[HASH_KEY] = config_hash(cfg)  # issue 13 hook: what skip_if_done compares
    if dist.rank() == 0:
        tables.report(cfg, metrics, out_dir)
    return metrics
