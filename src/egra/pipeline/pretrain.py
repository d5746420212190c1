"""Stage: pretrain — train a backbone and export its item (and user) vectors as an artifact.

Backbones: ``mgcn`` / ``freedom`` / ``lgmrec`` / ``damrs`` / ``lightgcn`` (fitted like any model, ``egra.pipeline.fit``,
early-stopped on valid Recall@20, best-valid weights exported), ``raw_features``
(concatenated L2-normalised modality features) and ``random`` (the control). The artifact
key hashes the dataset fingerprint, the backbone's resolved config, the graphs it trains on
and how it is trained (optimizer, batch, early stopping, strategy and world size), so a
sweep of EGRA runs shares one pretrained backbone and a changed input never reuses a
stale one.

Under a DDP launcher every rank runs this stage: a trained backbone is fitted by all ranks
together and written by rank 0 (``ArtifactCache.get_or_build(collective=True)``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from egra.pipeline import dist
from egra.pipeline.cache import Artifact, ArtifactCache, artifact_key
from egra.pipeline.checks import check_config, check_data
from egra.pipeline.evaluate import evaluate
from egra.pipeline.fit import build_module, build_net, fit
from egra.pipeline.graph import Graphs, GraphSpec, build_graphs, raw_feature_vectors
from egra.pipeline.history import resumable
from egra.pipeline.load import load_data, setup_run
from egra.pipeline.tables import metrics_table

log = logging.getLogger(__name__)
BACKBONES = ("mgcn", "freedom", "lgmrec", "damrs", "lightgcn", "raw_features", "random")
#: Artifact array names of a trained backbone's weights: ``state.<parameter name>``.
STATE_PREFIX = "state."


class BackboneFailed(RuntimeError):
    """The backbone's fit did not end ``ok`` (collapsed, diverged, never validated): nothing
    is exported or cached."""


BackboneCollapsed = BackboneFailed  # the name before other statuses existed


def backbone_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    if name not in cfg.backbones:
        raise KeyError(f"unknown backbone {name!r}: expected one of {sorted(cfg.backbones)}")
    return OmegaConf.to_container(cfg.backbones[name], resolve=True)


def backbone_spec(cfg: DictConfig, name: str) -> GraphSpec | None:
    """The graphs a trained backbone's model needs (e.g. MGCN's ``S^m``), or None."""
    bcfg = backbone_config(cfg, name)
    b = cfg.backbones[name]
    return GraphSpec.of(b.get("graph"), b.model) if bcfg["kind"] == "trained" else None


def _trainer_key(trainer: DictConfig) -> dict[str, Any]:
    """How the backbone is trained beyond its config: a DDP fit on N ranks sees other batches."""
    t = OmegaConf.to_container(trainer, resolve=True)
    return {k: t.get(k) for k in ("strategy", "devices", "num_nodes", "accelerator", "precision")}


#: backbone options whose default value changes nothing that was cached before they were added
_NEUTRAL: dict[str, Any] = {"early_stop": True, "weights": "best"}


def _key(cfg: DictConfig, name: str, fingerprint: str, graphs: Graphs | None = None) -> str:
    bcfg = backbone_config(cfg, name)
    # Options at their defaults stay out of the key, so artifacts built before they existed still answer.
    bcfg = {k: v for k, v in bcfg.items() if not (k in _NEUTRAL and v == _NEUTRAL[k])}
    parts: dict[str, Any] = {"backbone": name, "config": bcfg, "dataset": fingerprint}
    if bcfg["kind"] == "trained":
        # Everything else that changes the trained weights.
        parts["optim"] = OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
        parts["batch_size"] = int(cfg.data.batch_size)
        parts["patience"] = (
            OmegaConf.to_container(cfg.callbacks, resolve=True).get("early_stopping", {}).get("patience")
        )
        parts["trainer"] = _trainer_key(cfg.trainer)
        parts["graphs"] = dict(graphs.artifacts) if graphs is not None else {}
        # What the artifact holds: format 2 adds the weights (``state.<name>``) for optim.init.
        parts["format"] = 2
    return artifact_key(**parts)


def _train_backbone(
    cfg: DictConfig, name: str, dm, graphs: Graphs, work_dir
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    bcfg = cfg.backbones[name]
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.model = bcfg.model
        # The run's search options with the backbone's own graphs.
        own = OmegaConf.to_container(bcfg.graph) if bcfg.get("graph") is not None else {}
        sub.graph = {**OmegaConf.to_container(cfg.graph), **own}
        recipe = bcfg.get("optim") or {}
        sub.optim.lr_decay = list(recipe.lr_decay) if recipe.get("lr_decay") else None
        sub.optim.init = "scratch"
        sub.trainer.max_epochs = int(bcfg.max_epochs)
        sub.seed = int(bcfg.seed)
        sub.paths.output_dir = str(work_dir)
        # The work dir is keyed like the artifact: its last.ckpt is this backbone's (issue 13 hook).
        sub.ckpt_path = "last" if resumable(work_dir) is not None else None
        sub.logger = {}  # the parent run's logger tracks the pipeline; keep this stage quiet
        if not bcfg.get("early_stop", True):
            sub.callbacks.early_stopping = None
    setup_run(sub)
    net = build_net(sub.model, dm, graphs.model_inputs())
    module = build_module(sub, dm, net, graphs.names())
    fitted = fit(sub, dm, module, work_dir)
    if bcfg.get("weights", "best") == "last":
        # No checkpoint to restore: validation, test and the export see the final epoch's weights.
        fitted = dataclasses.replace(fitted, best_path=None)
    metrics = evaluate(sub, dm, fitted)
    if metrics.get("status", "ok") != "ok":
        # Never cache a failed backbone: S^pt from it would be noise for every later run.
        raise BackboneFailed(
            f"backbone {name}: {metrics.get('status_reason') or metrics['status']} "
            f"(set under backbones.{name}); no embeddings exported"
        )
    module = fitted.module
    net = module.net.cpu()
    view = str(bcfg.export)
    if hasattr(net, "representations"):
        users, items = net.representations(view)
    elif view == "fused":
        users, items = net.export()
    else:
        raise ValueError(f"backbone {name}: export view {view!r}: {type(net).__name__} exports only 'fused'")
    arrays = {"items": items.numpy().astype(np.float32), "users": users.numpy().astype(np.float32)}
    # The best-valid weights, for a model that starts from its backbone (optim.init=backbone).
    arrays.update({f"{STATE_PREFIX}{k}": v.detach().numpy() for k, v in net.state_dict().items()})
    return arrays, {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def backbone_state(art: Artifact | None) -> dict[str, np.ndarray]:
    """The trained backbone's best-valid weights held by its embedding artifact."""
    if art is None:
        raise ValueError("optim.init=backbone needs a pretrained backbone (graph.graph_source)")
    names = [n for n in art.manifest.get("files", {}) if n.startswith(STATE_PREFIX)]
    if not names:
        raise ValueError(
            f"backbone artifact {art.path} holds no weights: optim.init=backbone needs a trained backbone"
        )
    return {n[len(STATE_PREFIX) :]: art.array(n) for n in names}


def pretrain(cfg: DictConfig, dm, name: str, graphs: Graphs | None = None) -> Artifact:
    """Build (or reuse) the embedding artifact of backbone ``name`` on ``dm``'s dataset.

    ``graphs`` are the graphs the backbone's model trains on (graph stage, for
    :func:`backbone_spec`); none for the untrained backbones.
    """
    fingerprint = dm.data.fingerprint()
    key = _key(cfg, name, fingerprint, graphs)
    cache = ArtifactCache(cfg.paths.artifact_dir)
    bcfg = backbone_config(cfg, name)
    trained = bcfg["kind"] == "trained"
    if trained and graphs is None:
        raise ValueError(f"backbone {name}: a trained backbone needs its graphs (graph stage)")

    def build():
        t0 = time.perf_counter()
        log.info("pretraining backbone %s on %s", name, dm.data.name)
        if bcfg["kind"] == "raw_features":
            arrays, extra = {"items": raw_feature_vectors(dm)}, {}
        elif bcfg["kind"] == "random":
            rng = np.random.default_rng(int(bcfg["seed"]))
            arrays, extra = (
                {"items": rng.standard_normal((dm.data.n_items, int(bcfg["dim"]))).astype(np.float32)},
                {},
            )
        elif trained:
            work = cache.path("embeddings", key).with_name(f".{key}.work")
            # issue 13 hook: a killed run's last.ckpt is resumed, other leftovers are removed
            if dist.rank() == 0 and resumable(work) is None:
                shutil.rmtree(work, ignore_errors=True)  # leftovers of a killed run
            arrays, extra = _train_backbone(cfg, name, dm, graphs, work)
            dist.barrier()  # every rank is done with the fit's checkpoints
            if dist.rank() == 0:
                shutil.rmtree(work, ignore_errors=True)  # checkpoints are not part of the artifact
        else:
            raise ValueError(f"backbone {name}: unknown kind {bcfg['kind']!r}")
        meta = {
            "backbone": name,
            "config": bcfg,
            "dataset": dm.data.name,
            "dataset_fingerprint": fingerprint,
            "seconds": round(time.perf_counter() - t0, 3),
            **extra,
        }
        return arrays, meta

    # A trained backbone under a per-rank launcher is a DDP fit: every rank must take part.
    collective = trained and dist.reruns_per_rank(cfg.trainer)
    return cache.get_or_build("embeddings", key, build, required=("items",), collective=collective)


def run(cfg: DictConfig) -> Artifact:
    """``egra-pretrain``: load -> graphs of the backbone -> pretrain; print the artifact."""
    check_config(cfg)  # issue 13 hook: every setting checked before any stage
    setup_run(cfg)
    dm = load_data(cfg)
    check_data(cfg, dm)  # issue 13 hook
    name = str(cfg.backbone)
    spec = backbone_spec(cfg, name)
    graphs = build_graphs(cfg, dm, spec) if spec is not None else None
    art = pretrain(cfg, dm, name, graphs)
    status = "reused" if art.reused else "wrote"
    if dist.rank() == 0:
        print(f"{status} {cfg.backbone} embeddings: {art.path}")
        metrics = art.manifest.get("metrics") or {}
        if metrics:
            print(metrics_table(metrics, "test", tuple(cfg.eval.ks)))
    return art
