"""``egra-compare`` (``make compare``): models compared under the protocol of conf/study/compare.yaml.

    egra-compare [study overrides] [-- egra-train overrides]
    egra-compare dataset=cobuy trials=8 'eval_seeds=[0,1,2,3,4]' publish=bench/results/compare_cobuy
    egra-compare dataset=tiny trials=1 'eval_seeds=[0,1]' -- trainer.max_epochs=2

Study overrides are Hydra overrides of conf/study/compare.yaml; what follows ``--`` goes to every
egra-train job. Exit status: 0 done, 2 a bad setting (one line), 4 a job failed (the others ran).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from egra.cli import config_dir
from egra.cli.errors import EXIT_FAILED_JOBS, exit_code, one_line
from egra.experiments.compare import COMPARE_MD, Study, load, markdown
from egra.experiments.study import command_line, split_argv


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    study, train = split_argv(args)
    try:
        cfg = load(config_dir(), study, train)
        runner = Study(cfg, config_dir(), command=command_line("egra-compare", argv))
        result = runner.run()
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"egra-compare: {one_line(exc)}", file=sys.stderr)
        return code
    print(markdown(result))
    print(f"wrote {runner.out / COMPARE_MD}")
    failed = [
        s for r in result["models"].values() for s in r["status"].values() if s in ("failed", "missing")
    ]
    return EXIT_FAILED_JOBS if failed else 0


if __name__ == "__main__":
    sys.exit(main())
