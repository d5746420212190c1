"""One validation pass over the whole configuration, before any stage runs.

``check_config(cfg)`` needs no data: types, ranges and choices from the rule tables below,
relations between keys, and every model key checked against the model class's constructor
(so a typo such as ``+model.lambda_mn=0.1`` fails in a second, not after pretraining).
``check_data(cfg, dm)`` runs once the dataset is loaded (the reader has validated the files):
what depends on its size or its feature files (``k_pt`` < items, a model that needs features).

Both raise :class:`ConfigError` (one line: the key, the value, what was expected) or
:class:`egra.data.DataError`; the entry points print those as one line (``egra.cli.errors``).

To add a rule for a new model key, add one line to ``MODEL_RULES``; keys without a rule are
still checked for existence (constructor signature) and type (the constructor default's type).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from egra.data import DataError
from egra.data.synthetic import PRESETS
from egra.graphs import PT_NORMS
from egra.graphs.knn import METHODS as KNN_METHODS
from egra.graphs.knn import MODALITY_CONVENTIONS
from egra.models.egra import ALIGN_ANCHORS, ALIGN_SCALES, ALIGN_VIEWS, MODALITY_INPUTS, RAMPS, WEIGHTING_MODES
from egra.pipeline.fit import INITS, RECIPE_KEYS
from egra.pipeline.graph import GRAPH_INITS, GRAPH_KEYS, SELF_SOURCE


class ConfigError(ValueError):
    """A setting the user has to change; the message is one line naming the key."""


@dataclass(frozen=True)
class Rule:
    """What one key accepts. ``kind``: int | float | bool | str | ints | strs | pair."""

    kind: str
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None (null) allowed

    def expected(self) -> str:
        what = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "ints": "a non-empty list of integers",
            "strs": "a list of names",
            "pair": "a pair [factor, epochs] of positive numbers",
            "device": "auto, cpu, cuda or cuda:N",
        }[self.kind]
        if self.choices is not None:
            what = "one of " + ", ".join(map(str, self.choices))
        if self.ge is not None:
            what += f" >= {self.ge:g}"
        if self.gt is not None:
            what += f" > {self.gt:g}"
        if self.le is not None:
            what += f"{' and' if self.ge is not None or self.gt is not None else ''} <= {self.le:g}"
        if self.lt is not None:
            what += f"{' and' if self.ge is not None or self.gt is not None else ''} < {self.lt:g}"
        if self.kind == "ints" and (self.ge is not None or self.gt is not None):
            what = what.replace("integers", "integers, each")
        return what + (" (or null)" if self.optional else "")

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.optional
        if self.choices is not None and v not in self.choices:
            return False
        if self.kind == "int":
            return _is_int(v) and self._in_range(v)
        if self.kind == "float":
            return _is_num(v) and self._in_range(v)
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return isinstance(v, str)
        if self.kind == "ints":
            return _is_seq(v) and len(v) > 0 and all(_is_int(x) and self._in_range(x) for x in v)
        if self.kind == "strs":
            return _is_seq(v) and all(isinstance(x, str) and x for x in v)
        if self.kind == "pair":
            return _is_seq(v) and len(v) == 2 and all(_is_num(x) and x > 0 for x in v)
        if self.kind == "device":
            return isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v.lower()) is not None
        raise AssertionError(f"unknown rule kind {self.kind!r}")

    def _in_range(self, v: float) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_seq(v: Any) -> bool:
    return isinstance(v, (list, tuple, ListConfig))


def Int(ge: float | None = None, **kw: Any) -> Rule:  # noqa: N802 - reads as a type in the tables
    return Rule("int", ge=ge, **kw)


def Num(ge: float | None = None, gt: float | None = None, **kw: Any) -> Rule:  # noqa: N802
    return Rule("float", ge=ge, gt=gt, **kw)


def Choice(*choices: Any, **kw: Any) -> Rule:  # noqa: N802
    return Rule("str", choices=choices, **kw)


BOOL = Rule("bool")

NO_GRAPH = "none"
#: views a trained backbone can export; each model has its own (``VIEWS``, see _check_export)
EXPORT_VIEWS = ("fused", "id", "modality")

# Model keys by name, wherever they appear (cfg.model and backbones.<name>.model).
MODEL_RULES: dict[str, Rule] = {
    "embedding_dim": Int(ge=1),
    "n_layers": Int(ge=0),
    "n_ui_layers": Int(ge=0),
    "n_behavior_layers": Int(ge=0),
    "n_modality_layers": Int(ge=0),
    "n_mm_layers": Int(ge=0),
    "knn_k": Int(ge=1),
    "knn_convention": Choice(*MODALITY_CONVENTIONS),
    "cooc_k": Int(ge=1),  # S^b (DA-MRS's co-interaction graph), built by the graph stage
    "cooc_min_count": Int(ge=1),
    "mm_image_weight": Num(ge=0, le=1),
    "dropout": Num(ge=0, lt=1),
    "reg_weight": Num(ge=0),
    "reg_denominator": Num(gt=0),
    "cl_loss": Num(ge=0),
    "cl_weight": Num(ge=0),
    "kl_weight": Num(ge=0),
    "neighbor_weight": Num(ge=0),
    "alpha": Num(ge=0),
    "keep_rate": Num(gt=0, le=1),
    "n_hyper_layers": Int(ge=1),
    "hyper_num": Int(ge=1),
    "n_pseudo_pos": Int(ge=1),
    "tau": Num(gt=0),
    "tau_u": Num(gt=0),
    "tau_i": Num(gt=0),
    "tau_w": Num(gt=0),
    "beta": Num(ge=0),
    "lambda_min": Num(ge=0),
    "lambda_max": Num(ge=0),
    "P": Int(ge=0),
    "ramp": Choice(*RAMPS),
    "lambda_warmup": Int(ge=0),
    "entity_weighting": Choice(*WEIGHTING_MODES),
    "align_scale": Choice(*ALIGN_SCALES),
    "align_views": Choice(*ALIGN_VIEWS),
    "pt_norm": Choice(*PT_NORMS),
    "modality_input": Choice(*MODALITY_INPUTS),
    "align_anchor": Choice(*ALIGN_ANCHORS),
    "cross_pairs": BOOL,
    "train_features": BOOL,
    "pt_symmetric": BOOL,
    "pt_weighted": BOOL,
    "k_pt": Int(ge=0),  # 0 only with graph_source=none (see _check_relations)
    "graph_source": Rule("str"),  # a backbone name, "self" or "none": checked against cfg.backbones
    "graph_refresh_every": Int(ge=1),
    "graph_init": Choice(*GRAPH_INITS),
    "modalities": Rule("strs", optional=True),
    "lr_decay": Rule("pair", optional=True),
    "init": Choice(*INITS),  # backbone: needs a trained graph_source (see _check_relations)
}

# Keys of a model config the pipeline reads itself (training recipe; the graph stage's
# egra.pipeline.graph.GRAPH_KEYS) and strips before calling the constructor: allowed even
# though the constructor lacks them.
PIPELINE_MODEL_KEYS = (*RECIPE_KEYS, *GRAPH_KEYS)
# Constructor arguments the pipeline fills from the data and the graph stage.
DATA_ARGUMENTS = (
    "n_users",
    "n_items",
    "train_users",
    "train_items",
    "features",
    "modality_graphs",
    "item_graph",
    "behavior_graph",
)

# Everything else, by dotted path; a missing key is skipped (configs may omit groups).
RULES: dict[str, Rule] = {
    "seed": Int(),
    "threads": Int(ge=1, optional=True),
    "data.source": Choice("synthetic", "mmrec"),
    "data.preset": Choice(*PRESETS),  # read by source=synthetic only
    "data.batch_size": Int(ge=1),
    "data.eval_batch_size": Int(ge=1),
    "data.seed": Int(),
    "data.modalities": Rule("strs"),
    "data.require_features": BOOL,
    "data.mask_valid_at_test": BOOL,
    "data.filter_cold_users": BOOL,
    "trainer.max_epochs": Int(ge=1),
    "trainer.check_val_every_n_epoch": Int(ge=1),
    "trainer.log_every_n_steps": Int(ge=1),
    "trainer.num_nodes": Int(ge=1),
    "eval.ks": Rule("ints", ge=1),
    "eval.group_ks": Rule("ints", ge=1),
    "eval.n_pop_groups": Int(ge=1),
    "optim.optimizer.lr": Num(gt=0),
    "optim.optimizer.weight_decay": Num(ge=0),
    "optim.lr_decay": Rule("pair", optional=True),
    "callbacks.early_stopping.patience": Int(ge=1),
    "callbacks.collapse_guard.patience": Int(ge=1),
    "callbacks.collapse_guard.bpr_tol": Num(ge=0),
    "callbacks.collapse_guard.min_steps": Int(ge=0),
    "callbacks.collapse_guard.mostpop": BOOL,
    "graph.method": Choice(*KNN_METHODS),
    "graph.device": Rule("device"),
    "graph.chunk_size": Int(ge=1),
    "graph.nlist": Int(ge=1, optional=True),
    "graph.nprobe": Int(ge=1),
    "graph.hnsw_m": Int(ge=1),
    "graph.ef_search": Int(ge=1),
    "graph.ef_construction": Int(ge=1),
    "graph.seed": Int(),
    "skip_if_done": BOOL,
    "verbose": BOOL,
}
BACKBONE_RULES: dict[str, Rule] = {
    "kind": Choice("trained", "raw_features", "random"),
    "export": Choice(*EXPORT_VIEWS),
    "max_epochs": Int(ge=1),
    "early_stop": BOOL,
    "weights": Choice("best", "last"),
    "seed": Int(),
    "dim": Int(ge=1),
}


def _show(v: Any) -> str:
    if isinstance(v, (DictConfig, ListConfig)):
        v = OmegaConf.to_container(v, resolve=True)
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(key: str, value: Any, expected: str) -> str:
    return f"{key}={_show(value)}: expected {expected}"


def _get(node: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(node, (DictConfig, Mapping)) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _apply(rules: Mapping[str, Rule], node: Any, prefix: str, errors: list[str]) -> None:
    for key, rule in rules.items():
        found, value = _get(node, key)
        if found and not rule.ok(value):
            errors.append(_bad(f"{prefix}{key}", value, rule.expected()))


def model_class(target: str) -> type:
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception as err:  # Hydra wraps the ImportError in its own type
        raise ConfigError(f"_target_={target!r}: cannot import the model class ({err})") from None


def constructor_params(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named constructor arguments of ``cls``, following ``**kwargs`` up the base classes;
    and whether unknown names are still accepted (``**kwargs`` all the way up)."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        sig = inspect.signature(init).parameters
        for name, p in sig.items():
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
            return params, False
        if klass.__module__.startswith("torch."):
            break  # nn.Module's own **kwargs is not a model's argument list
    return params, True


def _default_rule(default: Any) -> Rule | None:
    """A type-only rule from a constructor default (keys nobody wrote a rule for)."""
    if isinstance(default, bool):
        return BOOL
    if isinstance(default, int):
        return Int()
    if isinstance(default, float):
        return Num()
    if isinstance(default, str):
        return Rule("str")
    return None


def check_model(mcfg: DictConfig, prefix: str, errors: list[str]) -> None:
    """Every key of a model config is a constructor argument or a pipeline key, with a valid value."""
    target = mcfg.get("_target_")
    if not isinstance(target, str):
        errors.append(f"{prefix}_target_: missing; expected the model class, e.g. egra.models.EGRA")
        return
    try:
        cls = model_class(target)
    except ConfigError as err:
        errors.append(f"{prefix}{err}")
        return
    params, open_kwargs = constructor_params(cls)
    known = (set(params) - set(DATA_ARGUMENTS)) | set(PIPELINE_MODEL_KEYS)
    for key in mcfg:
        if key in ("_target_", "_partial_"):
            continue
        if key in DATA_ARGUMENTS:
            errors.append(f"{prefix}{key}: set by the pipeline from the data; remove it from the config")
            continue
        if key not in known and not open_kwargs:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            errors.append(
                f"{prefix}{key}: not an argument of {cls.__name__}{hint}; expected one of {', '.join(sorted(known))}"
            )
            continue
        rule = MODEL_RULES.get(str(key))
        if rule is None and key in params:
            rule = _default_rule(params[key].default)
        value = mcfg[key]
        if rule is not None and not rule.ok(value):
            errors.append(_bad(f"{prefix}{key}", value, rule.expected()))
    lo, hi = mcfg.get("lambda_min"), mcfg.get("lambda_max")
    if _is_num(lo) and _is_num(hi) and lo > hi:
        errors.append(f"{prefix}lambda_min={lo} > {prefix}lambda_max={hi}: expected lambda_min <= lambda_max")


def _check_relations(cfg: DictConfig, errors: list[str]) -> None:
    m = cfg.get("model") or {}
    if "graph_source" in m:
        sources = [*sorted((cfg.get("backbones") or {}).keys()), SELF_SOURCE, NO_GRAPH]
        src = m.get("graph_source")
        if src not in sources:
            errors.append(_bad("model.graph_source", src, "one of " + ", ".join(sources)))
        elif src != NO_GRAPH and _is_int(m.get("k_pt")) and m.get("k_pt") < 1:
            errors.append(
                f"model.k_pt={m.get('k_pt')}: expected an integer >= 1 "
                f"(for no S^pt set model.graph_source={NO_GRAPH})"
            )
    if m.get("init") == "backbone":
        src = m.get("graph_source")
        kind = ((cfg.get("backbones") or {}).get(src) or {}).get("kind") if isinstance(src, str) else None
        if kind != "trained":
            trained = sorted(
                k for k, b in (cfg.get("backbones") or {}).items() if (b or {}).get("kind") == "trained"
            )
            errors.append(
                f"model.init=backbone needs a trained backbone as model.graph_source (one of "
                f"{', '.join(trained)}), got {src!r}"
            )
    ks = cfg.get("eval", {}).get("ks")
    if _is_seq(ks) and RULES["eval.ks"].ok(ks):
        for key in ("callbacks.model_checkpoint.monitor", "callbacks.early_stopping.monitor"):
            found, monitor = _get(cfg, key)
            if found and isinstance(monitor, str) and "@" in monitor:
                k = monitor.rsplit("@", 1)[1]
                if k.isdigit() and int(k) not in ks:
                    errors.append(f"{key}={monitor!r} needs K={k} in eval.ks={list(ks)}")
        found, group_ks = _get(cfg, "eval.group_ks")
        if found and _is_seq(group_ks) and not set(group_ks) <= set(ks):
            errors.append(f"eval.group_ks={list(group_ks)}: expected a subset of eval.ks={list(ks)}")
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "", "last") and not (isinstance(ckpt, str) and Path(ckpt).is_file()):
        errors.append(_bad("ckpt_path", ckpt, "null, 'last' or an existing checkpoint file"))


def _check_export(bcfg: DictConfig, prefix: str, errors: list[str]) -> None:
    """A trained backbone exports a view its model has (``VIEWS``; a model without them: ``fused``)."""
    view, target = bcfg.get("export"), bcfg.model.get("_target_")
    if bcfg.get("kind") != "trained" or view not in EXPORT_VIEWS or not isinstance(target, str):
        return
    try:
        cls = model_class(target)
    except ConfigError:
        return  # reported by check_model
    views = tuple(getattr(cls, "VIEWS", ("fused",)))
    if view not in views:
        errors.append(_bad(f"{prefix}export", view, f"one of {', '.join(views)} ({cls.__name__}'s views)"))


def _used_backbones(cfg: DictConfig) -> list[str]:
    names = []
    src = (cfg.get("model") or {}).get("graph_source")
    if isinstance(src, str) and src != NO_GRAPH:
        names.append(src)
    bb = cfg.get("backbone")
    if isinstance(bb, str):
        names.append(bb)
    return [n for n in dict.fromkeys(names) if n in (cfg.get("backbones") or {})]


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every bad setting of ``cfg`` (one line), else return."""
    errors: list[str] = []
    _apply(RULES, cfg, "", errors)
    if cfg.get("model") is not None:
        check_model(cfg.model, "model.", errors)
    backbones = cfg.get("backbones") or {}
    for name in _used_backbones(cfg):
        bcfg = backbones[name]
        _apply(BACKBONE_RULES, bcfg, f"backbones.{name}.", errors)
        if bcfg.get("model") is not None:
            check_model(bcfg.model, f"backbones.{name}.model.", errors)
            _check_export(bcfg, f"backbones.{name}.", errors)
    bb = cfg.get("backbone")
    if isinstance(bb, str) and bb not in backbones:
        errors.append(_bad("backbone", bb, "one of " + ", ".join(sorted(backbones))))
    _check_relations(cfg, errors)
    if errors:
        raise ConfigError("; ".join(errors))


def _needs_features(model_cfg: Any) -> bool:
    """A model consumes item features when its constructor picks ``modalities``."""
    if model_cfg is None or not isinstance(model_cfg.get("_target_"), str):
        return False
    return "modalities" in constructor_params(model_class(model_cfg._target_))[0]


def _feature_files(dm) -> str:
    from egra.data.mmrec import feature_path

    return ", ".join(feature_path(".", m).name for m in dm.modalities)


def check_data(cfg: DictConfig, dm) -> None:
    """Checks that need the loaded dataset ``dm`` (a set-up ``RecDataModule``)."""
    data = dm.data
    folder = Path(data.source).parent
    users: list[tuple[str, Any]] = [("model", cfg.get("model"))]
    backbones = cfg.get("backbones") or {}
    for name in _used_backbones(cfg):
        b = backbones[name]
        users.append((f"backbones.{name}", b.get("model") if b.get("kind") == "trained" else b))
    for where, mcfg in users:
        if mcfg is None:
            continue
        needs = _needs_features(mcfg) if "_target_" in mcfg else mcfg.get("kind") == "raw_features"
        if needs and not data.features:
            raise DataError(
                f"{folder}: {where} ({_name(mcfg)}) needs item features, but none of "
                f"{_feature_files(dm)} is there (data.modalities={list(dm.modalities)})"
            )
        wanted = mcfg.get("modalities") if "_target_" in mcfg else None
        if needs and wanted:
            missing = [m for m in wanted if m not in data.features]
            if missing:
                raise ConfigError(
                    f"{where}.modalities={list(wanted)}: {', '.join(missing)} not loaded from {folder} "
                    f"(loaded: {', '.join(sorted(data.features)) or 'none'})"
                )
        k = mcfg.get("knn_k") if "_target_" in mcfg else None
        if needs and _is_int(k) and k >= data.n_items:
            raise ConfigError(f"{where}.knn_k={k}: expected < the {data.n_items} items of {data.name}")
    m = cfg.get("model") or {}
    if m.get("graph_source", NO_GRAPH) != NO_GRAPH and _is_int(m.get("k_pt")) and m.k_pt >= data.n_items:
        raise ConfigError(
            f"model.k_pt={m.k_pt}: expected 1 <= k_pt < the {data.n_items} items of {data.name}"
        )


def _name(mcfg: Any) -> str:
    target = mcfg.get("_target_")
    return str(target).rsplit(".", 1)[-1] if target else f"kind={mcfg.get('kind')}"
