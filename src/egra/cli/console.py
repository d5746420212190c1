"""A quiet console for the entry points: one line per log record, no loader or advertising noise.

Hydra's job logging already prints every record once (console + the job's log file).
Lightning adds a second console handler to the ``lightning`` logger at import, so each of
its INFO lines appeared twice; FAISS logs which SIMD build it tried; Lightning advertises a
product once per Trainer. Progress bars, stage timings and warnings that matter stay.
"""

from __future__ import annotations

import logging
import warnings

# Third-party lines that say nothing about the run.
_DROPPED_PREFIXES = ("💡 Tip:",)
_DROPPED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # torch deprecation inside Lightning's own code
    r"The number of training batches .* is smaller than the logging interval",  # we log per epoch
    # Under DDP our epoch values are reduced across ranks before they are logged (or equal on
    # every rank, like λ), so Lightning's sync_dist advice does not apply.
    r"It is recommended to use `self.log\(",
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED_PREFIXES)


def quiet_console() -> None:
    """Call at the start of an entry point's task function (after Hydra configured logging)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import lightning  # noqa: F401 - its import installs the handler removed below

    if logging.getLogger().hasHandlers():
        # Hydra's root handlers print these records; Lightning's own console handler doubled them.
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if type(h) is logging.StreamHandler:
                    lg.removeHandler(h)
            lg.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdverts())
    for pattern in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
