"""Stage 1 — pretrain a backbone and export its item (and user) vectors as an artifact.

Backbones: ``mgcn`` / ``lightgcn`` (trained by the train stage, early-stopped on valid
Recall@20, best-valid weights exported), ``raw_features`` (concatenated L2-normalised
modality features) and ``random`` (the control). The artifact key hashes the dataset
fingerprint and the backbone's resolved config, so a sweep of EGRA runs shares one
pretrained backbone and a changed input never reuses a stale one.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from egra.pipeline.cache import Artifact, ArtifactCache, artifact_key
from egra.pipeline.checks import check_config, check_data
from egra.pipeline.history import resumable

log = logging.getLogger(__name__)
BACKBONES = ("mgcn", "lightgcn", "raw_features", "random")


class BackboneCollapsed(RuntimeError):
    """The backbone's training tripped the collapse guard: nothing is exported."""


def backbone_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    if name not in cfg.backbones:
        raise KeyError(f"unknown backbone {name!r}: expected one of {sorted(cfg.backbones)}")
    return OmegaConf.to_container(cfg.backbones[name], resolve=True)


def _key(cfg: DictConfig, name: str, fingerprint: str) -> str:
    bcfg = backbone_config(cfg, name)
    parts: dict[str, Any] = {"backbone": name, "config": bcfg, "dataset": fingerprint}
    if bcfg["kind"] == "trained":
        # Everything else that changes the trained weights.
        parts["optim"] = OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
        parts["batch_size"] = int(cfg.data.batch_size)
        parts["patience"] = (
            OmegaConf.to_container(cfg.callbacks, resolve=True).get("early_stopping", {}).get("patience")
        )
    return artifact_key(**parts)


def _raw_features(dm) -> np.ndarray:
    feats = dm.data.features
    if not feats:
        raise ValueError(f"backbone raw_features needs item features, but {dm.data.source} has none")
    blocks = []
    for name in sorted(feats):
        f = feats[name].astype(np.float32)
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        blocks.append(np.divide(f, norm, out=np.zeros_like(f), where=norm > 0))
    return np.concatenate(blocks, axis=1)


def _train_backbone(cfg: DictConfig, name: str, dm, work_dir) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from egra.pipeline.train import build_net, fit_and_evaluate, setup_run

    bcfg = cfg.backbones[name]
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.model = bcfg.model
        sub.optim.lr_decay = list(bcfg.lr_decay) if bcfg.get("lr_decay") else None
        sub.trainer.max_epochs = int(bcfg.max_epochs)
        sub.seed = int(bcfg.seed)
        sub.paths.output_dir = str(work_dir)
        # The work dir is keyed like the artifact: its last.ckpt is this backbone's (issue 13 hook).
        sub.ckpt_path = "last" if (work_dir / "checkpoints" / "last.ckpt").is_file() else None
        sub.logger = {}  # the parent run's logger tracks the pipeline; keep this stage quiet
    setup_run(sub)
    net = build_net(sub, dm)
    module, metrics = fit_and_evaluate(sub, dm, net, work_dir)
    if metrics.get("status") == "collapsed":
        # Never cache a collapsed backbone: S^pt from it would be noise for every later run.
        raise BackboneCollapsed(
            f"backbone {name} {metrics['collapse']} (set under backbones.{name}.model); no embeddings exported"
        )
    net = module.net.cpu()
    view = str(bcfg.export)
    if hasattr(net, "representations"):
        users, items = net.representations(view)
    elif view == "fused":
        users, items = net.export()
    else:
        raise ValueError(f"backbone {name}: export view {view!r} is only available for MGCN")
    arrays = {"items": items.numpy().astype(np.float32), "users": users.numpy().astype(np.float32)}
    return arrays, {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def pretrain(cfg: DictConfig, dm, name: str | None = None) -> Artifact:
    """Build (or reuse) the embedding artifact of backbone ``name`` on ``dm``'s dataset."""
    name = name or str(cfg.backbone)
    fingerprint = dm.data.fingerprint()
    key = _key(cfg, name, fingerprint)
    cache = ArtifactCache(cfg.paths.artifact_dir)
    bcfg = backbone_config(cfg, name)

    def build():
        t0 = time.perf_counter()
        log.info("pretraining backbone %s on %s", name, dm.data.name)
        if bcfg["kind"] == "raw_features":
            arrays, extra = {"items": _raw_features(dm)}, {}
        elif bcfg["kind"] == "random":
            rng = np.random.default_rng(int(bcfg["seed"]))
            arrays, extra = (
                {"items": rng.standard_normal((dm.data.n_items, int(bcfg["dim"]))).astype(np.float32)},
                {},
            )
        elif bcfg["kind"] == "trained":
            work = cache.path("embeddings", key).with_name(f".{key}.work")
            if resumable(work) is None:  # issue 13 hook: a killed run's last.ckpt is resumed
                shutil.rmtree(work, ignore_errors=True)  # leftovers of a killed run
            arrays, extra = _train_backbone(cfg, name, dm, work)
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

    return cache.get_or_build("embeddings", key, build, required=("items",))


def run(cfg: DictConfig) -> Artifact:
    from egra.pipeline.train import load_data, setup_run

    check_config(cfg)  # issue 13 hook: every setting checked before any stage
    setup_run(cfg)
    dm = load_data(cfg)
    check_data(cfg, dm)  # issue 13 hook
    art = pretrain(cfg, dm)
    status = "reused" if art.reused else "wrote"
    print(f"{status} {cfg.backbone} embeddings: {art.path}")
    metrics = art.manifest.get("metrics") or {}
    if metrics:
        from egra.pipeline.tables import metrics_table

        print(metrics_table(metrics, "test", tuple(cfg.eval.ks)))
    return art
