"""``egra-reproduce`` (``make reproduce``): the EGRA paper's experiments on one dataset.

    egra-reproduce [budget=smoke|full] [dataset=NAME] [out=DIR] [dry_run=true] [launcher=...] [-- k=v ...]

Overrides of conf/study/reproduce.yaml and its budget (conf/study/budget/). ``NAME``: a
``conf/data`` config (``baby``, ``sports``, ...), a generated preset (``tiny``, ``small``,
``cobuy``, ``synthetic-baby``), or ``mmrec`` with ``-- data.root=DIR``; default: the budget's.
What follows ``--`` goes to every run. Exit status 0 when every run finished (collapsed runs
included), 4 when a run failed, 2/3 for a bad setting / bad data (one line).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from egra.cli import config_dir
from egra.cli.errors import EXIT_FAILED_JOBS, exit_code, one_line
from egra.cli.train import main as train_main
from egra.experiments.reproduce import REPORT_MD, load, reproduce
from egra.experiments.study import command_line, split_argv


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    study, train = split_argv(args)
    try:
        budget = load(config_dir(), study, train)
        outcome = reproduce(
            budget,
            config_dir(),
            # egra-train's task function: the budget's in_process launcher runs its multiruns here.
            task_function=train_main.__wrapped__,
            command=command_line("egra-reproduce", argv),
        )
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"egra-reproduce: {one_line(exc)}", file=sys.stderr)
        return code
    runs = outcome.plan.unique()
    if budget.dry_run:
        todo = sum(r.status in ("missing", "failed") for r in runs)
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
