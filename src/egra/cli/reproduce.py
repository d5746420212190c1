"""``egra-reproduce`` (``make reproduce``): the EGRA paper's experiments on one dataset.

    egra-reproduce --budget smoke|full [--dataset NAME] [--out DIR] [k=v ...]

``NAME``: a ``conf/data`` config (``baby``, ``sports``, ...), a generated preset (``tiny``,
``small``, ``cobuy``, ``synthetic-baby``), or ``mmrec`` with ``data.root=DIR``; default: the
budget's. Extra ``k=v`` overrides go to every run (``data=mmrec data.root=DIR`` for your own
folder). Exit status 0 when every run finished (collapsed runs included), 4 when a run failed,
2/3 for a bad setting / bad data (one line).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from egra.cli import config_dir
from egra.cli.errors import EXIT_FAILED_JOBS, exit_code, one_line
from egra.cli.train import main as train_main
from egra.pipeline.reproduce import REPORT_MD, reproduce


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egra-reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--budget", default="smoke", help="conf/reproduce/<budget>.yaml: smoke | full (or a .yaml path)"
    )
    p.add_argument("--dataset", default=None, help="data config or generated preset (default: the budget's)")
    p.add_argument("--out", default=None, help="default: <paths.log_dir>/reproduce/<dataset>-<budget>")
    p.add_argument(
        "--launcher",
        choices=("subprocess", "in_process"),
        default=None,
        help="run each setting's multirun in a `python -m egra.train` subprocess or in this process "
        "(default: the budget's)",
    )
    p.add_argument("--dry-run", action="store_true", help="compose and check every run, list what would run")
    p.add_argument("overrides", nargs="*", help="k=v overrides for every run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = "egra-reproduce " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    try:
        outcome = reproduce(
            args.budget,
            config_dir(),
            dataset=args.dataset,
            extra=args.overrides,
            out=args.out,
            # egra-train's task function: the budget's in_process launcher runs its multiruns here.
            task_function=train_main.__wrapped__,
            command=command,
            launcher=args.launcher,
            dry_run=args.dry_run,
        )
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"egra-reproduce: {one_line(exc)}", file=sys.stderr)
        return code
    runs = outcome.plan.unique()
    if args.dry_run:
        todo = sum(r.status not in ("ok", "collapsed") for r in runs)
        print(f"{len(runs)} jobs: {todo} to run (dry run: nothing ran)")
        return 0
    print(
        f"{len(runs)} jobs: {outcome.launched} run now, {len(runs) - outcome.launched} reused"
        + (f", {len(outcome.failed)} failed (see report)" if outcome.failed else "")
    )
    print(f"wrote {outcome.plan.out / REPORT_MD}")
    return EXIT_FAILED_JOBS if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
