"""``egra-compare``: LightGCN, MGCN and EGRA with an equal tuning budget, on several seeds.

    egra-compare --preset small --trials 10 --seeds 0 1 2 3 4 --out logs/compare/small [k=v ...]

Extra ``k=v`` arguments go to every ``egra-train`` call (e.g. ``trainer.max_epochs=50``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from egra.pipeline.compare import COMPARE_JSON, COMPARE_MD, compare


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="egra-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="generated preset (data.preset)")
    p.add_argument(
        "--trials", type=int, default=10, help="Optuna trials per model (the same for every model)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=None, help="default: logs/compare/<preset>")
    p.add_argument(
        "--results", action="store_true", help="also copy to bench/results/compare_<preset>.{md,json}"
    )
    p.add_argument("overrides", nargs="*", help="k=v overrides for every egra-train call")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or Path("logs/compare") / args.preset
    compare(out, preset=args.preset, trials=args.trials, seeds=args.seeds, extra=args.overrides)
    print((out / COMPARE_MD).read_text())
    if args.results:
        dest = Path("bench/results")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / COMPARE_MD, dest / f"compare_{args.preset}.md")
        shutil.copy(out / COMPARE_JSON, dest / f"compare_{args.preset}.json")
    print(f"wrote {out / COMPARE_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
