"""What every study shares: its Hydra config (``conf/study/<name>.yaml`` checked against a
dataclass schema), the dataset a study runs on, and the provenance its results file records."""

from __future__ import annotations

import datetime as _dt
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from egra.data.synthetic import PRESETS
from egra.experiments.collect import parse_overrides
from egra.pipeline.checks import ConfigError
from egra.pipeline.io import git_dirty, git_revision

STUDY_DIR = "study"  # conf/study/: the studies' own config tree


def load_config(
    conf_dir: str | Path,
    name: str,
    overrides: Sequence[str],
    schema: type,
    train_overrides: Sequence[str] = (),
) -> DictConfig:
    """``conf/study/<name>.yaml`` composed by Hydra with ``overrides`` and checked against the
    dataclass ``schema`` (types, unknown keys); a mistake is one :class:`ConfigError` line.
    ``train_overrides`` are appended to the study's ``overrides`` (what every job gets)."""
    root = Path(conf_dir).resolve() / STUDY_DIR
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3", job_name=name):
            cfg = compose(config_name=name, overrides=list(overrides))
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        if train_overrides:
            merged.overrides = [*merged.overrides, *train_overrides]
    except (HydraException, OmegaConfBaseException) as e:
        # Hydra's message names what it could not apply; the search path after it is noise here.
        text = " ".join(str(e).split()).split(" Config search path:")[0]
        raise ConfigError(f"{name}: {text}") from None
    return merged


def slug(label: str) -> str:
    """A label as a directory name that needs no quoting in a Hydra override."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``study overrides -- egra-train overrides`` → the two lists."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def data_overrides(conf_dir: str | Path, dataset: str, overrides: Sequence[str]) -> list[str]:
    """The data overrides of a study's jobs: none when ``overrides`` choose the data themselves
    (``data=...``), else those of ``dataset``."""
    if "data" in parse_overrides(overrides):
        return []
    return dataset_overrides(conf_dir, dataset)


def dataset_overrides(conf_dir: str | Path, dataset: str) -> list[str]:
    """A dataset name as ``egra-train`` overrides: a ``conf/data/<name>.yaml`` (``baby``, ...),
    a generated preset (``tiny``, ``small``, ``cobuy``; ``synthetic-<preset>`` for one that
    shares its name with a data config, e.g. ``synthetic-baby``), or ``mmrec`` (with
    ``data.root=DIR`` among the jobs' overrides)."""
    data_dir = Path(conf_dir) / "data"
    configs = sorted(p.stem for p in data_dir.glob("*.yaml") if p.stem != "synthetic")
    if dataset.startswith("synthetic-") and dataset.split("-", 1)[1] in PRESETS:
        return ["data=synthetic", f"data.preset={dataset.split('-', 1)[1]}"]
    if dataset in configs:
        return [f"data={dataset}"]
    if dataset in PRESETS:
        return ["data=synthetic", f"data.preset={dataset}"]
    raise ConfigError(
        f"dataset {dataset!r}: expected a data config ({', '.join(configs)}), a generated preset "
        f"({', '.join(sorted(PRESETS))}, or synthetic-<preset>), or mmrec with data.root=DIR"
    )


def dataset_label(dataset: str, overrides: Sequence[str]) -> str:
    """The results' name for the data: the folder of a ``data.root=DIR`` override, else the
    ``data=<name>`` (and ``data.preset=<p>``) of the overrides, else ``dataset``."""
    values = {k: str(v) for k, v in parse_overrides(overrides, ignored=()).items()}
    if "data.root" in values:
        return Path(values["data.root"]).name
    if values.get("data") == "synthetic":
        return values.get("data.preset", "synthetic")
    if "data" in values:
        return values["data"]
    if "data.preset" in values and dataset in PRESETS:
        return values["data.preset"]
    return dataset


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(command: str) -> dict[str, Any]:
    """What made a results file: the command, the code (git commit, uncommitted changes), the
    library versions, the machine and the date."""
    return {
        "command": command,
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "versions": {
            "python": platform.python_version(),
            **{
                n: _version(n)
                for n in ("egra", "torch", "lightning", "hydra-core", "numpy", "scipy", "optuna")
            },
        },
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    return prog + " " + shlex.join(list(sys.argv[1:] if argv is None else argv))
