"""The configuration schema: every key the pipeline reads, declared once, as pydantic models.

One model per config group (``data``, ``graph``, ``optim``, ``trainer``, ``callbacks``,
``eval``, ``backbones.<name>``) with the key's type, range or choices and the rules that tie
keys together (``lambda_min <= lambda_max``, ``check_val_every_n_epoch <= max_epochs``, ...).
Choices that code below the pipeline owns (a model's ``pt_norm``, the search methods, the
ramp shapes) are read from that code's source (:func:`egra.pipeline.signatures.constant`),
so each list exists once and nothing here imports torch.

Model keys are the model class's constructor arguments (read by ``egra.pipeline.checks``
from its signature); :class:`ModelArgs` adds the ranges and choices of arguments by name,
whatever model takes them. A new model needs nothing here: its arguments are checked for
existence and for the type of their default value; a range is one field of :class:`ModelArgs`.

Messages: a field's ``description`` is what "expected" says; otherwise it is made from the
type (:func:`expected`). Rules that involve several keys raise ``ValueError`` with ``{p}``
where the group's path goes (``{p}lambda_min`` -> ``callbacks.alignment_schedule.lambda_min``).
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from egra.pipeline.signatures import constant


def _choices(*values: Any) -> Any:
    return Literal[tuple(values)]  # type: ignore[valid-type]


# -- choices owned by the code that branches on them (read from its source) ----------------
PRESETS = constant("egra.data.synthetic", "PRESETS")
DDP_BATCH_MODES = constant("egra.data.sampling", "DDP_BATCH_MODES")
KNN_METHODS = constant("egra.graphs.knn", "METHODS")
KNN_CONVENTIONS = (
    *constant("egra.graphs.knn", "MODALITY_PRESETS"),
    *constant("egra.graphs.knn", "JOINT_MODALITY_CONVENTIONS"),
)
PT_NORMS = constant("egra.graphs.adjacency", "PT_NORMS")
RAMPS = constant("egra.training.callbacks", "RAMPS")
PRECISIONS = constant("egra.training.module", "SUPPORTED_PRECISIONS")
WEIGHTING_MODES = constant("egra.models.egra", "WEIGHTING_MODES")
ALIGN_SCALES = constant("egra.models.egra", "ALIGN_SCALES")
ALIGN_VIEWS = constant("egra.models.egra", "ALIGN_VIEWS")
ALIGN_ANCHORS = constant("egra.models.egra", "ALIGN_ANCHORS")
MODALITY_INPUTS = constant("egra.models.egra", "MODALITY_INPUTS")

# -- choices of the pipeline itself (its stages import them from here) ---------------------
#: ``graph.graph_source`` besides a backbone's name: S^pt from the model's own vectors, or none.
SELF_SOURCE, NO_GRAPH = "self", "none"
#: ``graph.graph_init``: ``S^pt`` of a ``graph_source=self`` run before its first rebuild.
GRAPH_INITS = ("raw_features", "warmup")
#: ``optim.init``: where the weights start.
INITS = ("scratch", "backbone")
#: views a trained backbone can export (each model class says which it has: ``VIEWS``)
EXPORT_VIEWS = ("fused", "id", "modality")
#: ``trainer.accelerator`` values; ``gpu``/``cuda`` need an NVIDIA GPU (egra.pipeline.checks).
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
#: Half-precision parameters: Lightning accepts them, the models cannot train in them.
HALF_PRECISIONS = ("16-true", "bf16-true", "16", 16, "bf16", "transformer-engine")
# Strategies by name (Lightning's registry), or a strategy object given by ``_target_``.
STRATEGY_PATTERN = r"auto|ddp(_spawn|_fork|_notebook)?(_find_unused_parameters_(true|false))?|fsdp\w*|deepspeed\w*|single_device|dp"
#: Above this λ the alignment term outweighs BPR by more than an order of magnitude at any
#: scale; the collapse guard stops what collapses below it.
LAMBDA_LIMIT = 10.0
#: Above this learning rate Adam's steps (about lr per weight) dwarf the weights themselves.
LR_LIMIT = 1.0

PosInt = Annotated[int, Ge(1)]
NonNegInt = Annotated[int, Ge(0)]
NonNegFloat = Annotated[float, Ge(0)]
PosFloat = Annotated[float, Gt(0)]
Names = Annotated[list[str], MinLen(1)]


class Section(BaseModel):
    """A config group: strict types (no "5" for 5, no 1 for true), no unknown keys."""

    model_config = ConfigDict(
        strict=True, extra="forbid", populate_by_name=True, allow_inf_nan=False, defer_build=True
    )


class Targeted(Section):
    """A group instantiated from ``_target_``: other keys are the class's constructor
    arguments (checked against its signature by egra.pipeline.checks)."""

    model_config = ConfigDict(
        strict=True, extra="allow", populate_by_name=True, allow_inf_nan=False, defer_build=True
    )
    target: str = Field(None, alias="_target_", description="an importable class path")
    partial: bool = Field(None, alias="_partial_")


# -- model ---------------------------------------------------------------------------------
class ModelArgs(Targeted):
    """Ranges and choices of model constructor arguments, by name, for every model."""

    embedding_dim: PosInt = None
    n_layers: NonNegInt = None
    n_ui_layers: NonNegInt = None
    n_behavior_layers: NonNegInt = None
    n_modality_layers: NonNegInt = None
    n_mm_layers: NonNegInt = None
    mm_image_weight: Annotated[float, Ge(0), Le(1)] = None
    dropout: Annotated[float, Ge(0), Lt(1)] = None
    reg_weight: NonNegFloat = None
    reg_denominator: PosFloat = None
    cl_loss: NonNegFloat = None
    cl_weight: NonNegFloat = None
    kl_weight: NonNegFloat = None
    neighbor_weight: NonNegFloat = None
    alpha: NonNegFloat = None
    keep_rate: Annotated[float, Gt(0), Le(1)] = None
    n_hyper_layers: PosInt = None
    hyper_num: PosInt = None
    n_pseudo_pos: PosInt = None
    tau: PosFloat = None
    tau_u: PosFloat = None
    tau_i: PosFloat = None
    tau_w: PosFloat = None
    beta: NonNegFloat = None
    entity_weighting: _choices(*WEIGHTING_MODES) = None
    align_scale: _choices(*ALIGN_SCALES) = None
    align_views: _choices(*ALIGN_VIEWS) = None
    align_anchor: _choices(*ALIGN_ANCHORS) = None
    pt_norm: _choices(*PT_NORMS) = None
    modality_input: _choices(*MODALITY_INPUTS) = None
    cross_pairs: bool = None
    train_features: bool = None
    modalities: Names | None = None


# -- data ----------------------------------------------------------------------------------
class Data(Section):
    target: str = Field(None, alias="_target_")
    source: Literal["synthetic", "mmrec"] = None
    root: str = Field(None, description="a folder")
    preset: _choices(*PRESETS) = None
    seed: int = None
    modalities: Names = Field(None, description="a non-empty list of modality names, e.g. [image, text]")
    require_features: bool = None
    batch_size: PosInt = None
    eval_batch_size: PosInt = None
    ddp_batch: _choices(*DDP_BATCH_MODES) = None
    mask_valid_at_test: bool = None
    filter_cold_users: bool = None


# -- graph ---------------------------------------------------------------------------------
class ModelGraphs(Section):
    """Which graphs a model trains on (conf/graph/model/<name>.yaml)."""

    knn_k: PosInt = None
    knn_convention: _choices(*KNN_CONVENTIONS) = None
    graph_source: str = Field(None, description="a backbone name, self or none")
    k_pt: NonNegInt = None
    pt_symmetric: bool = None
    pt_weighted: bool = None
    graph_refresh_every: PosInt = None
    graph_init: _choices(*GRAPH_INITS) = None
    cooc_k: PosInt = None
    cooc_min_count: PosInt = None

    @model_validator(mode="after")
    def _k_pt_with_a_source(self):
        if self.k_pt == 0 and self.graph_source not in (None, NO_GRAPH):
            raise ValueError(
                f"{{p}}k_pt=0: expected an integer >= 1 (for no S^pt set {{p}}graph_source={NO_GRAPH})"
            )
        return self


#: Which keys of :class:`ModelGraphs` feed which constructor input: a model whose constructor
#: takes ``modality_graphs`` needs ``knn_k``, one that takes ``item_graph`` needs ``graph_source``,
#: one that takes ``behavior_graph`` (DA-MRS's ``S^b``) needs ``cooc_k`` (the first key), and a
#: model without the input takes none of them.
GRAPH_INPUTS = {
    "modality_graphs": ("knn_k", "knn_convention"),
    "item_graph": (
        "graph_source",
        "k_pt",
        "pt_symmetric",
        "pt_weighted",
        "graph_refresh_every",
        "graph_init",
    ),
    "behavior_graph": ("cooc_k", "cooc_min_count"),
}


class Graph(ModelGraphs):
    """The graph stage: the model's graphs and how neighbours are searched."""

    method: _choices(*KNN_METHODS) = None
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = Field(
        None, description="auto, cpu, cuda or cuda:N"
    )
    chunk_size: PosInt = None
    nlist: PosInt | None = None
    nprobe: PosInt = None
    hnsw_m: PosInt = None
    ef_search: PosInt = None
    ef_construction: PosInt = None
    seed: int = None


# -- optimizer and recipe ------------------------------------------------------------------
class Optimizer(Targeted):
    lr: Annotated[float, Gt(0), Le(LR_LIMIT)] = None
    weight_decay: NonNegFloat = None


class Recipe(Section):
    """A model's own training recipe (conf/optim/model/<name>.yaml)."""

    lr_decay: Annotated[list[PosFloat], MinLen(2)] | None = Field(
        None, description="[factor, epochs] (two positive numbers: LR x factor^(epoch/epochs)), or null"
    )

    @field_validator("lr_decay")
    @classmethod
    def _pair(cls, v):
        if v is not None and len(v) != 2:
            raise ValueError("{p}lr_decay: expected [factor, epochs]")
        return v


class Optim(Recipe):
    optimizer: Optimizer = None
    init: _choices(*INITS) = None


# -- trainer -------------------------------------------------------------------------------
Devices = (
    Annotated[int, Ge(1)]
    | Literal[-1, "auto", "-1"]
    | Annotated[str, Field(pattern=r"^\d*[1-9]\d*$")]
    | Annotated[str, Field(pattern=r"^\d+(,\d+)+,?$|^\d+,$")]
    | Annotated[list[NonNegInt], MinLen(1)]
)


class Trainer(Targeted):
    """The Lightning Trainer arguments the pipeline passes on (others: the signature check)."""

    max_epochs: PosInt = None
    check_val_every_n_epoch: PosInt = Field(
        None, description="an integer >= 1 (validation runs every that many epochs; it picks the best epoch)"
    )
    accelerator: _choices(*ACCELERATORS) = None
    devices: Devices = Field(
        None, description="a number of devices >= 1, -1 or auto (all), or device ids such as [0, 1] or '0,1'"
    )
    num_nodes: PosInt = None
    precision: _choices(*PRECISIONS, 32) = Field(
        None,
        description="32-true, 16-mixed or bf16-mixed (16-true and bf16-true are refused: the sparse "
        "graph products and the counted InfoNCE keep fp32 parameters)",
    )
    strategy: Annotated[str, Field(pattern=rf"^({STRATEGY_PATTERN})$")] | dict[str, Any] = Field(
        None, description="auto, ddp, ddp_spawn, fsdp, deepspeed, ... or a strategy given by _target_"
    )
    gradient_clip_val: NonNegFloat | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    log_every_n_steps: PosInt = None
    num_sanity_val_steps: Annotated[int, Ge(-1)] = None
    deterministic: bool | Literal["warn"] | None = None
    use_distributed_sampler: bool = None
    enable_progress_bar: bool = None
    enable_model_summary: bool = None
    enable_checkpointing: bool = None
    sync_batchnorm: bool = None
    default_root_dir: str | None = None

    @model_validator(mode="after")
    def _validation_runs(self):
        every, epochs = self.check_val_every_n_epoch, self.max_epochs
        if every is not None and epochs is not None and every > epochs:
            raise ValueError(
                f"{{p}}check_val_every_n_epoch={every} > {{p}}max_epochs={epochs}: no validation would run, "
                "so there would be no best epoch to test; expected check_val_every_n_epoch <= max_epochs"
            )
        return self


# -- callbacks -----------------------------------------------------------------------------
Lambda = Annotated[float, Ge(0), Le(LAMBDA_LIMIT)]


class AlignmentSchedule(Targeted):
    """λ(t) of models with an alignment term (EGRA)."""

    lambda_min: Lambda = None
    lambda_max: Lambda = None
    P: NonNegInt = None
    ramp: _choices(*RAMPS) = None
    lambda_warmup: NonNegInt = None

    @model_validator(mode="after")
    def _ordered(self):
        lo, hi = self.lambda_min, self.lambda_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(
                f"{{p}}lambda_min={lo:g} > {{p}}lambda_max={hi:g}: expected lambda_min <= lambda_max"
            )
        return self


class CollapseGuard(Targeted):
    patience: PosInt = None
    bpr_tol: NonNegFloat = None
    mostpop: bool = None
    min_steps: NonNegInt = None


class EarlyStopping(Targeted):
    monitor: str = None
    mode: Literal["min", "max"] = None
    patience: PosInt = None
    min_delta: NonNegFloat = None


class ModelCheckpoint(Targeted):
    monitor: str | None = None
    mode: Literal["min", "max"] = None
    save_top_k: Annotated[int, Ge(-1)] = None


class Callbacks(Section):
    """The project's callbacks; other entries are callbacks of the user's (any ``_target_``)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, defer_build=True)
    model_checkpoint: ModelCheckpoint | None = None
    last_checkpoint: ModelCheckpoint | None = None
    early_stopping: EarlyStopping | None = None
    alignment_schedule: AlignmentSchedule | None = None
    collapse_guard: CollapseGuard | None = None


# -- evaluation, backbones, the whole run --------------------------------------------------
class Eval(Section):
    ks: Annotated[list[PosInt], MinLen(1)] = None
    group_ks: list[PosInt] = None
    n_pop_groups: PosInt = None

    @model_validator(mode="after")
    def _group_ks_in_ks(self):
        if self.ks is not None and self.group_ks is not None and not set(self.group_ks) <= set(self.ks):
            raise ValueError(f"{{p}}group_ks={self.group_ks}: expected a subset of {{p}}ks={self.ks}")
        return self


class Backbone(Section):
    """``backbones.<name>``: how a backbone's item vectors are made."""

    kind: Literal["trained", "raw_features", "random"] = None
    export: _choices(*EXPORT_VIEWS) = None
    max_epochs: PosInt = None
    early_stop: bool = None
    weights: Literal["best", "last"] = None
    seed: int = None
    dim: PosInt = None
    model: dict[str, Any] | None = None  # a model config: checked like ``model``
    graph: ModelGraphs | None = None
    optim: Recipe | None = None


class Run(Section):
    """The whole config of egra-train / egra-pretrain (groups not listed are not read by the
    pipeline's code: paths, logger, hydra)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, defer_build=True)
    seed: int = None
    threads: PosInt | None = None
    ckpt_path: str | None = Field(None, description="null, 'last' or an existing checkpoint file")
    skip_if_done: bool = None
    verbose: bool = None
    optimized_metric: str | None = None
    backbone: str | None = None
    data: Data = None
    model: dict[str, Any] | None = None  # constructor arguments: egra.pipeline.checks.check_model
    graph: Graph = None
    optim: Optim = None
    trainer: Trainer = None
    callbacks: Callbacks | None = None
    eval: Eval = None
    backbones: dict[str, Backbone] = None

    @field_validator("ckpt_path")
    @classmethod
    def _checkpoint_exists(cls, v):
        if v not in (None, "", "last") and not Path(v).is_file():
            raise ValueError(f"ckpt_path={v!r}: expected null, 'last' or an existing checkpoint file")
        return v

    @model_validator(mode="after")
    def _relations(self):
        errors: list[str] = []
        backbones = self.backbones or {}
        trained = sorted(k for k, b in backbones.items() if b.kind == "trained")
        g = self.graph
        src = g.graph_source if g is not None else None
        if src is not None and src not in (*backbones, SELF_SOURCE, NO_GRAPH):
            errors.append(
                f"graph.graph_source={src!r}: expected one of {', '.join([*sorted(backbones), SELF_SOURCE, NO_GRAPH])}"
            )
        if self.optim is not None and self.optim.init == "backbone" and src not in trained:
            errors.append(
                f"optim.init=backbone needs a trained backbone as graph.graph_source "
                f"(one of {', '.join(trained)}), got {src!r}"
            )
        if self.backbone is not None and self.backbone not in backbones:
            errors.append(f"backbone={self.backbone!r}: expected one of {', '.join(sorted(backbones))}")
        ks = self.eval.ks if self.eval is not None else None
        cbs = self.callbacks
        for name in ("model_checkpoint", "early_stopping"):
            cb = getattr(cbs, name, None) if cbs is not None else None
            monitor = getattr(cb, "monitor", None)
            if ks and isinstance(monitor, str) and "@" in monitor:
                k = monitor.rsplit("@", 1)[1]
                if k.isdigit() and int(k) not in ks:
                    errors.append(f"callbacks.{name}.monitor={monitor!r} needs K={k} in eval.ks={ks}")
        every = self.trainer.check_val_every_n_epoch if self.trainer is not None else None
        for name in used_backbones(self):
            b = backbones[name]
            if (
                every is not None
                and b.kind == "trained"
                and b.max_epochs is not None
                and every > b.max_epochs
            ):
                errors.append(
                    f"trainer.check_val_every_n_epoch={every} > backbones.{name}.max_epochs={b.max_epochs}: "
                    "the backbone would never validate; expected check_val_every_n_epoch <= max_epochs"
                )
        if errors:
            raise ValueError("; ".join(errors))
        return self


def used_backbones(run: Run) -> list[str]:
    """The backbones this run trains or reads: ``graph.graph_source`` and egra-pretrain's ``backbone``."""
    names = []
    src = run.graph.graph_source if run.graph is not None else None
    if src not in (None, NO_GRAPH, SELF_SOURCE):
        names.append(src)
    if run.backbone is not None:
        names.append(run.backbone)
    return [n for n in dict.fromkeys(names) if n in (run.backbones or {})]


# -- messages ------------------------------------------------------------------------------
def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _kind(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return "a value"


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        for cls, attr, sign in ((Ge, "ge", ">="), (Gt, "gt", ">"), (Le, "le", "<="), (Lt, "lt", "<")):
            if isinstance(m, cls):
                parts.append(f"{sign} {getattr(m, attr):g}")
    return " and ".join(parts)


def expected(tp: Any, info: FieldInfo | None = None) -> str:
    """What a key of type ``tp`` accepts, in words (``an integer >= 1 (or null)``)."""
    if info is not None and info.description:
        return info.description
    optional = False
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        tp = rest[0] if len(rest) == 1 else tp
    metadata = list(info.metadata) if info is not None else []
    if typing.get_origin(tp) is Annotated:
        inner, *meta = typing.get_args(tp)
        metadata += meta
        tp = inner
    text = _kind(tp)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (Any,)
        word = _kind(item)
        item_meta = list(typing.get_args(item)[1:]) if typing.get_origin(item) is Annotated else []
        nouns = {"an integer": "integers", "a number": "numbers", "a string": "names"}.get(word, "values")
        text = f"a {'non-empty ' if any(isinstance(m, MinLen) for m in metadata) else ''}list of {nouns}"
        if _bounds(item_meta):
            text += f", each {_bounds(item_meta)}"
    elif _bounds(metadata):
        text += f" {_bounds(metadata)}"
    return text + (" (or null)" if optional else "")


def field_expected(section: type[BaseModel], name: str) -> str | None:
    info = section.model_fields.get(name)
    return None if info is None else expected(info.annotation, info)


def finite(v: Any) -> bool:
    return not (isinstance(v, float) and not math.isfinite(v))
