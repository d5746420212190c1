"""A quiet console for the entry points: each fact once, one line per log record, no noise.

Hydra's job logging prints every record (console + the job's log file). On top of it:

* :func:`quiet_console` (first thing in a task function, before the config check): every
  handler drops a message it already printed in this job (Lightning says "Seed set to 999" at
  every seeding and "GPU available" for every Trainer; the config check and the pipeline both
  check the config), Lightning's lines that say nothing about the run (TPU availability,
  "Restoring states"/"Loaded model weights" before every evaluation, its adverts) are
  dropped, and so are third-party warnings the project answers itself (``16-mixed`` on a CPU
  is one warning line of the config check);
* :func:`drop_lightning_handlers` (after the pipeline, and with it Lightning, is imported):
  Lightning adds its own console handler to its loggers at import, which printed each of its
  INFO lines a second time.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's INFO lines that say nothing about the run.
_DROPPED_PREFIXES = (
    "💡 Tip:",
    "TPU available:",
    "HPU available:",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
)
_DROPPED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # torch deprecation inside Lightning's own code
    r"The number of training batches .* is smaller than the logging interval",  # we log per epoch
    # Under DDP our epoch values are reduced across ranks before they are logged (or equal on
    # every rank, like λ), so Lightning's sync_dist advice does not apply.
    r"It is recommended to use `self.log\(",
    # The config check says this once, naming the key (egra.pipeline.checks).
    r"You passed `Trainer\(accelerator='cpu', precision='16-mixed'\)`",
)


class _Drop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED_PREFIXES)


class OnceFilter(logging.Filter):
    """Passes a message the first time its handler sees it in this job."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_console() -> None:
    """Call first in an entry point's task function (after Hydra configured logging)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    for h in logging.getLogger().handlers:
        for f in [f for f in h.filters if isinstance(f, (OnceFilter, _Drop))]:
            h.removeFilter(f)  # a new job of a multirun starts with nothing seen
        h.addFilter(_Drop())
        h.addFilter(OnceFilter())
    for pattern in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def drop_lightning_handlers() -> None:
    """Call once Lightning is imported: its records then reach Hydra's handlers only."""
    if not logging.getLogger().hasHandlers():
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        lg.propagate = True
