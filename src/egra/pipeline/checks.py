"""One validation pass over the whole configuration, before torch is imported and before any stage.

``check_config(cfg)`` needs no data: the schema (``egra.pipeline.schema``: types, ranges,
choices, rules between keys), every ``_target_`` group's keys against the class's
constructor read from source (``egra.pipeline.signatures``: a typo such as
``+model.lambda_mn=0.1`` fails in a second, naming the closest argument), and the machine
(``trainer.accelerator=gpu`` where there is no GPU). ``check_data(cfg, dm)`` runs once the
dataset is loaded and before any other stage: what depends on its size or its feature files.

Both raise :class:`ConfigError` (one line: the key, the value, what was expected) or
:class:`egra.data.DataError`; the entry points print those as one line (``egra.cli.errors``).
Settings that are allowed but say nothing useful give one warning line (logged once).
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import shutil
import subprocess
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import BaseModel, ValidationError, create_model

from egra.data import DataError
from egra.pipeline import schema
from egra.pipeline.signatures import REQUIRED, NotFound, class_names, constant, signature

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting the user has to change; the message is one line naming the key."""


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
# Hydra's instantiate keys: not constructor arguments.
HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
# Config groups read into the schema (the others, paths/logger/hydra, are not the pipeline's).
CHECKED_GROUPS = (
    "seed",
    "threads",
    "ckpt_path",
    "skip_if_done",
    "verbose",
    "optimized_metric",
    "backbone",
    "data",
    "model",
    "graph",
    "optim",
    "trainer",
    "callbacks",
    "eval",
    "backbones",
)


def _show(v: Any) -> str:
    """A value as the command line writes it (null, true, 'text', [1, 2])."""
    if isinstance(v, (DictConfig, ListConfig)):
        v = OmegaConf.to_container(v, resolve=True)
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(key: str, value: Any, expected: str) -> str:
    return f"{key}={_show(value)}: expected {expected}"


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# -- the config as plain data --------------------------------------------------------------
def _missing_message(key: str) -> str:
    if key == "data.root":
        return "data.root: missing; data=mmrec reads an MMRec-format folder: give it as data.root=/path/to/folder"
    return f"{key}: missing (???); expected a value, e.g. {key}=..."


def _resolved(node: Any, path: str, errors: list[str]) -> Any:
    """``node`` as plain data, interpolations resolved. A missing value (``???``) is reported
    and left out; so is a value that only Hydra's runtime resolves (``${hydra:...}``, absent
    when a config is composed without it, e.g. by a test)."""
    if isinstance(node, DictConfig):
        out = {}
        for k in node.keys():
            key = f"{path}.{k}" if path else str(k)
            if OmegaConf.is_missing(node, k):
                errors.append(_missing_message(key))
                continue
            try:
                child = node._get_node(k)
                value = child if isinstance(child, (DictConfig, ListConfig)) else node[k]
            except Exception as err:  # an interpolation that cannot resolve
                if "HydraConfig was not set" not in str(err):
                    errors.append(f"{key}: cannot be resolved ({' '.join(str(err).split()[:20])})")
                continue
            out[str(k)] = _resolved(value, key, errors)
        return out
    if isinstance(node, ListConfig):
        return [_resolved(node[i], f"{path}[{i}]", errors) for i in range(len(node))]
    return node


def _plain(cfg: DictConfig, errors: list[str]) -> dict[str, Any]:
    """The checked groups of ``cfg`` resolved to plain data (see :func:`_resolved`)."""
    tree: dict[str, Any] = {}
    for key in CHECKED_GROUPS:
        if key not in cfg:
            continue
        if OmegaConf.is_missing(cfg, key):
            errors.append(_missing_message(key))
            continue
        try:
            value = cfg[key]
        except Exception as err:
            if "HydraConfig was not set" not in str(err):
                errors.append(f"{key}: cannot be resolved ({' '.join(str(err).split()[:20])})")
            continue
        tree[key] = _resolved(value, key, errors)
    return tree


# -- schema errors as lines ----------------------------------------------------------------
def _unwrap_model(tp: Any) -> tuple[type[BaseModel] | None, Any]:
    """The BaseModel inside an annotation (Optional[X]), or the value type of a dict[str, X]."""
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) is dict:
            value = typing.get_args(arg)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return None, value  # a dict of sections (backbones.<name>)
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, None
    return None, None


def _walk(root: type[BaseModel], loc: tuple) -> tuple[list[str], type[BaseModel] | None, str | None, bool]:
    """(key path, the section holding the last key, that key's field name or None, whether
    the path ends on a section rather than a field) along ``loc``."""
    path: list[str] = []
    model: type[BaseModel] | None = root
    field: str | None = None
    pending_dict: Any = None
    for part in loc:
        if pending_dict is not None:
            path.append(str(part))
            model, pending_dict = _unwrap_model(pending_dict)
            field = None
            continue
        if model is None or not isinstance(part, str):
            break
        name = next((n for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if name is None:
            path.append(part)  # an extra key
            field = None
            break
        path.append(part)
        field = name
        sub, value_type = _unwrap_model(model.model_fields[name].annotation)
        if sub is None and value_type is None:
            break
        if value_type is not None:
            pending_dict = value_type
            continue
        model, field = sub, None
    owner = model
    return path, owner, field, field is None


def _value_at(tree: Any, path: list[str]) -> Any:
    for part in path:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _owner(root: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    _, owner, _, _ = _walk(root, tuple(path))
    return owner


def schema_errors(
    err: ValidationError, tree: dict[str, Any], root: type[BaseModel] = schema.Run
) -> list[str]:
    """One message per bad key of a pydantic error (a union's several errors become one)."""
    out: list[str] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path, owner, field, on_section = _walk(root, loc)
        key = ".".join(path)
        if e["type"] == "extra_forbidden":
            parent = _owner(root, path[:-1])
            known = sorted((f.alias or n) for n, f in parent.model_fields.items()) if parent else []
            msg = f"{key}: not a setting of {'.'.join(path[:-1]) or 'the config'}{_did_you_mean(path[-1], known)}"
            if known:
                msg += f"; expected one of {', '.join(known)}"
        elif e["type"] in ("value_error", "assertion_error"):
            text = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            base = path if on_section else path[:-1]
            msg = text.replace("{p}", ".".join(base) + "." if base else "")
        else:
            info = owner.model_fields.get(field) if (owner is not None and field) else None
            what = schema.expected(info.annotation, info) if info is not None else str(e["msg"]).lower()
            msg = _bad(key, _value_at(tree, path), what)
        if msg not in out:
            out.append(msg)
    return out


# -- classes named by _target_ -------------------------------------------------------------
def _signature(target: Any, key: str, errors: list[str], what: str = "a class"):
    if not isinstance(target, str) or not target:
        errors.append(f"{key}: missing; expected {what}")
        return None
    try:
        return signature(target)
    except NotFound as err:
        module = target.rpartition(".")[0]
        hint = _did_you_mean(target.rpartition(".")[2], class_names(module)) if module else ""
        errors.append(f"{key}={target!r}: {err}{hint}; expected {what}")
        return None


def moved_model_keys(argv: Sequence[str]) -> list[str]:
    """Command-line overrides ``model.<key>=...`` of a key that lives in another group (the
    graph stage's, the λ schedule's, the optimizer's): Hydra would refuse them with its own
    multi-line error before any check runs, so they are named here, with where they belong.
    ``+model.<key>`` (an explicit addition) is left to the constructor check."""
    moved = _elsewhere()
    out = []
    for arg in argv:
        key, eq, _ = arg.partition("=")
        name = key.removeprefix("model.")
        if eq and key.startswith("model.") and name in moved:
            out.append(f"{key}: not a model argument; {moved[name]} is the setting")
    return out


def _elsewhere() -> dict[str, str]:
    """Keys a model config may be mistaken to hold, by name: where they are set."""
    out = {k: f"graph.{k}" for k in schema.ModelGraphs.model_fields}
    out.update(
        {
            k: f"callbacks.alignment_schedule.{k}"
            for k in schema.AlignmentSchedule.model_fields
            if k not in ("target", "partial")
        }
    )
    out.update({k: f"optim.{k}" for k in ("init", "lr_decay")})
    return out


def _unknown_keys(
    node: Mapping[str, Any],
    sig,
    prefix: str,
    errors: list[str],
    skip=(),
    elsewhere: Mapping[str, str] | None = None,
) -> list[str]:
    """Keys of ``node`` the constructor does not take (reported, with the closest argument or
    the key of another group it belongs to); returns the known ones."""
    known = sorted(set(sig.params) - set(skip))
    elsewhere = elsewhere or {}
    ok = []
    for k in node:
        if k in HYDRA_KEYS:
            continue
        if k in skip:
            errors.append(f"{prefix}{k}: set by the pipeline from the data; remove it from the config")
        elif k not in sig.params and not sig.open:
            if k in elsewhere:
                hint = f" ({elsewhere[k]} is the setting)"
            else:
                close = difflib.get_close_matches(str(k), [*known, *elsewhere], n=1)
                hint = f" (did you mean {elsewhere.get(close[0], close[0])}?)" if close else ""
            listed = f"; expected one of {', '.join(known)}" if len(known) <= 25 else ""
            errors.append(f"{prefix}{k}: not an argument of {sig.name}{hint}{listed}")
        else:
            ok.append(k)
    return ok


def _default_type(default: Any) -> Any:
    """The type a config value must have when all that is known is the constructor default."""
    if default is REQUIRED or default is None:
        return None
    for tp in (bool, int, float, str):
        if type(default) is tp:
            return tp
    return None


@functools.lru_cache(maxsize=64)
def _args_model(target: str) -> type[BaseModel]:
    """:class:`schema.ModelArgs` plus the arguments it does not declare, typed by their defaults."""
    sig = signature(target)
    extra = {}
    for name, p in sig.params.items():
        if name in schema.ModelArgs.model_fields or name in DATA_ARGUMENTS:
            continue
        tp = _default_type(p.default)
        if tp is not None:
            extra[name] = (tp, None)
    return create_model(f"{sig.name}Args", __base__=schema.ModelArgs, **extra)


def check_model(
    mcfg: Mapping[str, Any], gcfg: Mapping[str, Any] | None, prefix: str, gprefix: str, errors: list[str]
):
    """A model config's keys are constructor arguments of its class, with valid values, and
    its graph config gives exactly the graphs the constructor takes."""
    sig = _signature(
        mcfg.get("_target_"), f"{prefix}_target_", errors, "the model class, e.g. egra.models.EGRA"
    )
    if sig is None:
        return None
    known = _unknown_keys(mcfg, sig, prefix, errors, skip=DATA_ARGUMENTS, elsewhere=_elsewhere())
    values = {k: mcfg[k] for k in known}
    try:
        model = _args_model(mcfg["_target_"])
        model.model_validate(values)
    except ValidationError as err:
        for e in err.errors():
            name = str(e["loc"][0]) if e["loc"] else ""
            info = model.model_fields.get(name)
            what = schema.expected(info.annotation, info) if info is not None else str(e["msg"]).lower()
            line = _bad(f"{prefix}{name}", values.get(name), what)
            if line not in errors:
                errors.append(line)
    graphs = dict(gcfg or {})
    for needed, keys in schema.GRAPH_INPUTS.items():
        first = keys[0]
        if (
            needed in sig.params
            and graphs.get(first) is None
            and not any(e.startswith(f"{gprefix}{first}") for e in errors)
        ):
            errors.append(
                f"{gprefix}{first}: missing; {sig.name} trains on it (conf/graph/model/<model>.yaml)"
            )
        if needed not in sig.params:
            for k in keys:
                if graphs.get(k) is not None:
                    errors.append(
                        f"{gprefix}{k}={_show(graphs[k])}: {sig.name} takes no such graph; remove it"
                    )
    return sig


def _check_targets(tree: dict[str, Any], errors: list[str]) -> None:
    """The optimizer, the trainer, the callbacks and a strategy object: keys against signatures."""
    opt = (tree.get("optim") or {}).get("optimizer")
    if isinstance(opt, dict):
        sig = _signature(
            opt.get("_target_"),
            "optim.optimizer._target_",
            errors,
            "an optimizer class, e.g. torch.optim.Adam",
        )
        if sig is not None:
            _unknown_keys(opt, sig, "optim.optimizer.", errors, skip=("params",))
    trainer = tree.get("trainer")
    if isinstance(trainer, dict):
        sig = _signature(trainer.get("_target_"), "trainer._target_", errors, "lightning.Trainer")
        if sig is not None:
            _unknown_keys(trainer, sig, "trainer.", errors, skip=("callbacks", "logger"))
        strategy = trainer.get("strategy")
        if isinstance(strategy, dict):
            sig = _signature(
                strategy.get("_target_"), "trainer.strategy._target_", errors, "a strategy class"
            )
            if sig is not None:
                _unknown_keys(strategy, sig, "trainer.strategy.", errors)
    for name, cb in (tree.get("callbacks") or {}).items():
        if isinstance(cb, dict) and "_target_" in cb:
            sig = _signature(cb["_target_"], f"callbacks.{name}._target_", errors, "a callback class")
            if sig is not None:
                _unknown_keys(cb, sig, f"callbacks.{name}.", errors)


# -- the machine ---------------------------------------------------------------------------
def machine_gpus() -> int:
    """NVIDIA GPUs this process may use, without importing torch: ``CUDA_VISIBLE_DEVICES`` if
    set, else the driver's ``/proc/driver/nvidia/gpus`` entries, else ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and not v.strip().startswith("-")]
        if not ids:
            return 0
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        n = sum(1 for _ in proc.iterdir())
    elif shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    else:
        return 0
    return min(n, len(ids)) if visible is not None else n


def torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA (or ROCm) build, read from ``torch/version.py``."""
    try:
        return bool(constant("torch.version", "cuda") or constant("torch.version", "hip"))
    except NotFound:
        return True  # cannot tell: let Lightning say


def _device_ids(devices: Any) -> tuple[int | None, list[int]]:
    """(how many devices, explicit ids) of a ``trainer.devices`` value; None: all of them."""
    if devices in (-1, "-1", "auto"):
        return None, []
    if isinstance(devices, int):
        return devices, []
    if isinstance(devices, list):
        return len(devices), list(devices)
    if isinstance(devices, str) and "," in devices:
        ids = [int(x) for x in devices.split(",") if x.strip()]
        return len(ids), ids
    return (int(devices), []) if isinstance(devices, str) and devices.isdigit() else (None, [])


def _check_machine(tree: dict[str, Any], errors: list[str], warnings: list[str]) -> None:
    t = tree.get("trainer")
    if not isinstance(t, dict):
        return
    acc = t.get("accelerator")
    gpus: int | None = None
    if acc in ("gpu", "cuda"):
        gpus = machine_gpus()
        if gpus == 0:
            errors.append(
                f"trainer.accelerator={acc}: this machine has no NVIDIA GPU (no /proc/driver/nvidia/gpus, "
                "no nvidia-smi); use trainer.accelerator=cpu (or trainer=cpu)"
            )
            return
        if not torch_has_cuda():
            errors.append(
                f"trainer.accelerator={acc}: the installed torch is a CPU build (torch.version.cuda is None); "
                "install the GPU stack (make setup GPU=1) or use trainer.accelerator=cpu"
            )
            return
        n, ids = _device_ids(t.get("devices"))
        if n is not None and n > gpus:
            errors.append(f"trainer.devices={_show(t.get('devices'))}: this machine has {gpus} GPU(s)")
        elif ids and max(ids) >= gpus:
            errors.append(f"trainer.devices={_show(t.get('devices'))}: GPU ids go from 0 to {gpus - 1} here")
    if str(t.get("precision")) == "16-mixed" and (acc == "cpu" or (acc == "auto" and machine_gpus() == 0)):
        warnings.append(
            "trainer.precision=16-mixed on a CPU: there is no fp16 autocast there; Lightning trains in "
            "bf16-mixed instead (say trainer.precision=bf16-mixed to silence this)"
        )


# -- the whole config ----------------------------------------------------------------------
def _export_views(tree: dict[str, Any], errors: list[str], sigs: dict[str, Any]) -> None:
    for name, b in (tree.get("backbones") or {}).items():
        sig = sigs.get(name)
        view = (b or {}).get("export")
        if sig is None or b.get("kind") != "trained" or view not in schema.EXPORT_VIEWS:
            continue
        views = tuple(sig.attributes.get("VIEWS", ("fused",)))
        if view not in views:
            errors.append(
                _bad(f"backbones.{name}.export", view, f"one of {', '.join(views)} ({sig.name}'s views)")
            )


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every bad setting of ``cfg`` (one line), else log the
    warnings (one line each) and return. Imports no torch."""
    errors: list[str] = []
    warnings: list[str] = []
    tree = _plain(cfg, errors)
    try:
        schema.Run.model_validate(tree)
    except ValidationError as err:
        errors += [m for m in schema_errors(err, tree) if m not in errors]
    if isinstance(tree.get("model"), dict):
        check_model(tree["model"], tree.get("graph"), "model.", "graph.", errors)
    sigs = {}
    for name, b in (tree.get("backbones") or {}).items():
        if isinstance(b, dict) and b.get("kind") == "trained" and isinstance(b.get("model"), dict):
            sigs[name] = check_model(
                b["model"], b.get("graph"), f"backbones.{name}.model.", f"backbones.{name}.graph.", errors
            )
    _export_views(tree, errors, sigs)
    _check_targets(tree, errors)
    if not errors:
        _check_machine(tree, errors, warnings)
    if errors:
        raise ConfigError("; ".join(dict.fromkeys(errors)))
    for w in warnings:
        log.warning("%s", w)


# -- with the data -------------------------------------------------------------------------
def _models_in_use(cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """(config path, model config or untrained backbone config, its graph config) of the model
    and of the backbones the run reads."""
    out = [("model", cfg.get("model"), cfg.get("graph"))]
    backbones = cfg.get("backbones") or {}
    names = []
    src = (cfg.get("graph") or {}).get("graph_source")
    if isinstance(src, str) and src not in (schema.NO_GRAPH, schema.SELF_SOURCE):
        names.append(src)
    if isinstance(cfg.get("backbone"), str):
        names.append(cfg.backbone)
    for name in dict.fromkeys(names):
        b = backbones.get(name)
        if b is not None:
            out.append(
                (f"backbones.{name}", b.get("model") if b.get("kind") == "trained" else b, b.get("graph"))
            )
    return out


def _needs_features(mcfg: Any) -> bool:
    """A model consumes item features when its constructor picks ``modalities``."""
    if mcfg is None:
        return False
    if "_target_" not in mcfg:
        return mcfg.get("kind") == "raw_features"
    try:
        return "modalities" in signature(str(mcfg._target_)).params
    except NotFound:
        return False


def _feature_files(dm) -> str:
    from egra.data.mmrec import feature_path

    return ", ".join(feature_path(".", m).name for m in dm.modalities)


def check_data(cfg: DictConfig, dm) -> None:
    """Checks that need the loaded dataset ``dm`` (a set-up ``RecDataModule``)."""
    data = dm.data
    folder = Path(data.source).parent
    n_items = data.n_items
    for where, mcfg, gcfg in _models_in_use(cfg):
        if mcfg is None:
            continue
        needs = _needs_features(mcfg)
        name = str(mcfg.get("_target_") or f"kind={mcfg.get('kind')}").rsplit(".", 1)[-1]
        if needs and not data.features:
            raise DataError(
                f"{folder}: {where} ({name}) needs item features, but none of "
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
        gprefix = "graph" if where == "model" else f"{where}.graph"
        g = gcfg or {}
        k = g.get("knn_k")
        if needs and isinstance(k, int) and k >= n_items:
            raise ConfigError(f"{gprefix}.knn_k={k}: expected < the {n_items} items of {data.name}")
    g = cfg.get("graph") or {}
    k_pt = g.get("k_pt")
    if (
        g.get("graph_source", schema.NO_GRAPH) not in (None, schema.NO_GRAPH)
        and isinstance(k_pt, int)
        and k_pt >= n_items
    ):
        raise ConfigError(f"graph.k_pt={k_pt}: expected 1 <= k_pt < the {n_items} items of {data.name}")
    groups = int(cfg.eval.n_pop_groups)
    counts = data.item_train_counts()
    with_train = int((counts > 0).sum())
    limit = min(n_items, with_train + 1)
    if groups > limit:
        raise ConfigError(
            f"eval.n_pop_groups={groups}: expected <= {limit} for {data.name} ({n_items} items, {with_train} "
            "with train interactions; groups hold equal train interactions and none may be empty)"
        )
    big = [k for k in cfg.eval.ks if k >= n_items]
    if big:
        log.warning(
            "eval.ks: K=%s >= the %d items of %s: every item is in the top-K, so the @%s metrics are "
            "trivial (Recall 1)",
            ", ".join(map(str, big)),
            n_items,
            data.name,
            big[0],
        )
