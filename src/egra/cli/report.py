"""``egra-report DIR [DIR ...] [--out DIR] [--metrics ...]``: tables and plots of a sweep."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from egra.experiments.compare import COMPARE_JSON, render_file
from egra.experiments.report import DEFAULT_METRICS, NoJobsError, write_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="egra-report",
        description=(
            "Collect the jobs of Hydra multirun directories (.hydra/config.yaml, overrides and "
            "metrics.json) into results.csv, report.md (mean ± std over seeds) and PNG plots; "
            "print the table. A make-compare directory prints its comparison."
        ),
    )
    p.add_argument("dirs", nargs="+", help="multirun directories (or single run directories)")
    p.add_argument("--out", default=None, help="where to write the files (default: the first DIR)")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="KEY",
        help="metrics of the Markdown table, space- or comma-separated, e.g. test/Recall@20,valid/NDCG@10 "
        "(no split prefix = test/; put DIRs first); "
        f"default: {' '.join(DEFAULT_METRICS)}",
    )
    p.add_argument("--no-plots", action="store_true", help="write only results.csv and report.md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 with at least one finished job, 1 when no job finished, 2 when no job found."""
    args = _parser().parse_args(argv)
    comparisons = [Path(d) / COMPARE_JSON for d in args.dirs if (Path(d) / COMPARE_JSON).is_file()]
    if comparisons:  # an egra-compare directory: its tables and paired tests
        for path in comparisons:
            print(render_file(path))
        return 0
    try:
        metrics = [m for item in args.metrics for m in item.split(",") if m] if args.metrics else None
        report = write_report(args.dirs, out=args.out, metrics=metrics, plots=not args.no_plots)
    except (NoJobsError, FileNotFoundError) as e:
        print(f"egra-report: {e}", file=sys.stderr)
        return 2
    print(report.table)
    if report.failed:
        print("\nfailed/missing:")
        print("\n".join(f"  {n}" for n in report.failed))
    for s in report.skipped:
        print(f"skipped {s}")
    print(f"\nwrote {', '.join(p.name for p in report.files)} to {report.out_dir}")
    return 0 if (~report.results["status"].isin(["failed", "missing"])).any() else 1


if __name__ == "__main__":
    sys.exit(main())
