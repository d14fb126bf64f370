"""``pifs-jax reproduce``: run the experiment scripts and write the reproduction report.

The work is :func:`pifs_jax.reproduce.run_reproduction`; nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import sys

from pifs_jax.cli.common import Subcommand, UsageError, command_line, usage_error_for

DESCRIPTION = """\
Run the experiment scripts in the repository's experiments/ folder and write the
reproduction report OUT/REPORT.md (paper values beside ours, figures, environment, timing)
plus OUT/reproduction.json. Each experiment writes its JSON and figures to OUT/NAME/.
An experiment that fails is reported as FAILED; the others still run, and the command
exits with status 1."""

EPILOG = """\
examples:
  # everything, into ./results
  pifs-jax reproduce

  # one experiment, reduced grids (what the test suite runs)
  pifs-jax reproduce --only schedule_geometry --quick --out /tmp/results

  # experiments from another folder
  pifs-jax reproduce --experiments-dir my_experiments --out my_results"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results", metavar="DIR", help="report folder (default: results)")
    parser.add_argument("--only", nargs="+", action="extend", default=None, metavar="NAME",
                        help="run only these experiments (file stems in experiments/, e.g. schedule_geometry); "
                        "repeatable (default: all)")
    parser.add_argument("--quick", action="store_true", help="reduced runs that exercise every code path (default: full)")
    parser.add_argument("--experiments-dir", default=None, metavar="DIR",
                        help="folder of experiment scripts (default: the repository's experiments/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pifs_jax import reproduce

    try:
        available = reproduce.discover_experiments(args.experiments_dir)
    except ValueError as exc:
        raise usage_error_for(exc, {"experiments_dir": "--experiments-dir"}, default="--experiments-dir") from None
    if args.only:
        unknown = [name for name in args.only if name not in available]
        if unknown:
            raise UsageError(
                "--only",
                f"unknown experiment(s) {', '.join(unknown)}; available: {', '.join(available) or '(none)'}",
            )
    report = reproduce.run_reproduction(
        args.out, args.only, args.quick,
        experiments_dir=args.experiments_dir, progress=not args.no_progress, command=command_line(args.argv),
    )
    for outcome in report.outcomes:
        print(f"{'ok    ' if outcome.ok else 'FAILED'} {outcome.name} ({outcome.seconds:.1f} s)")
    print(f"report: {report.report_path}")
    if not report.ok:
        print(f"{len(report.failed)} experiment(s) failed: {', '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0



SUBCOMMAND = Subcommand(
    name="reproduce",
    help="run the experiments and write the reproduction report REPORT.md",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)
