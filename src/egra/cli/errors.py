"""User errors as one line and a distinct exit status; internal errors keep their traceback.

A user error is something the user fixes in the command line, the config or the data folder:
:class:`egra.pipeline.checks.ConfigError` and :class:`egra.data.DataError`. The traceback is
still available with ``HYDRA_FULL_ERROR=1`` or ``verbose=true``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from egra.data import DataError
from egra.pipeline.checks import ConfigError

# Exit statuses of egra-train / egra-pretrain (1 stays an internal error or a Hydra usage error).
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_FAILED_JOBS = 4


def exit_code(exc: BaseException) -> int | None:
    """The exit status of a user error, or None for an internal one."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, DataError):
        return EXIT_DATA
    return None


def one_line(exc: BaseException) -> str:
    kind = "bad setting" if isinstance(exc, ConfigError) else "bad data"
    return f"{kind}: " + " ".join(str(exc).split())


def wants_traceback(cfg: Any) -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(cfg is not None and cfg.get("verbose", False))


def exit_if_user_error(prog: str, exc: BaseException, cfg: Any) -> None:
    """Print a user error as one line on stderr and exit with its status; return otherwise."""
    code = exit_code(exc)
    if code is None or wants_traceback(cfg):
        return
    print(f"{prog}: {one_line(exc)}", file=sys.stderr, flush=True)
    sys.exit(code)
