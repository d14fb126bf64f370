"""``pifs-jax reproduce``: run the experiment scripts and write the reproduction report.

The work is :func:`pifs_jax.reproduce.run_reproduction`; nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from pifs_jax.cli.common import PROG, Subcommand, command_line, output_dir

DESCRIPTION = """\
Run the experiment scripts in the repository's experiments/ folder and write the
reproduction report OUT/REPORT.md (paper values beside ours, figures, environment, timing)
plus OUT/reproduction.json. Each experiment writes its JSON and figures to OUT/NAME/.
An experiment that fails is reported as FAILED; the others still run, and the command
exits with status 1. Experiments about trained models analyse the models shipped with the
package when they exist (training nothing; the report names the weights and their sha256);
--retrain trains them from scratch instead (runs cached in OUT/NAME/runs/)."""

EPILOG = """\
examples:
  # everything, into ./results
  pifs-jax reproduce

  # one experiment, reduced grids (what the test suite runs)
  pifs-jax reproduce --only schedule_geometry --quick --out /tmp/results

  # train the models from scratch instead of analysing the shipped ones
  pifs-jax reproduce --only two_regimes --retrain

  # experiments from another folder
  pifs-jax reproduce --experiments-dir my_experiments --out my_results

an interrupted run (Ctrl-C) exits with status 130 and never leaves a REPORT.md that
disagrees with the data: before the first experiment writes, OUT/REPORT.md (and
reproduction.json) of a previous run is renamed to REPORT.stale.md (reproduction.stale.json)
and OUT/INCOMPLETE.md names the experiments finished, running and not started. REPORT.md is
written last; INCOMPLETE.md, then the stale files are removed only after it. So REPORT.md
without INCOMPLETE.md means a finished run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=output_dir,
        default="results",
        metavar="DIR",  # argparse types the default too
        help="report folder, created if missing (default: results)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        default=None,
        metavar="NAME",
        help="run only these experiments (file stems in experiments/, e.g. schedule_geometry); "
        "repeatable (default: all)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced runs that exercise every code path")
    size.add_argument(
        "--full",
        action="store_true",
        help="the long runs of the experiments that have one (longer training, more trajectories; meant for a GPU)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train the models of the trained-model experiments from scratch (cached in OUT/NAME/runs/) "
        "instead of analysing the shipped ones (--full always trains)",
    )
    parser.add_argument(
        "--experiments-dir",
        default=None,
        metavar="DIR",
        help="folder of experiment scripts (default: the bundled experiments, installed as "
        "pifs_jax.experiments from the repository's experiments/)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@contextlib.contextmanager
def _exit_at_once_on_interrupt(*, progress: bool):
    """While active, SIGINT (Ctrl-C) prints one line and ends the process with status 130.

    Why not the default ``KeyboardInterrupt``: raised inside an experiment, it unwinds through JAX
    while XLA's thread pools may still run dispatched computations, and the interpreter teardown
    that follows (finalisation racing those threads) was seen to crash with a segmentation fault
    (exit 139). It is also raised wherever the main thread happens to be, e.g. inside JAX's
    garbage-collection callback, where Python prints "Exception ignored" and swallows it, so the
    run went on. The handler below runs in the main thread at the next bytecode boundary and calls
    ``os._exit(130)``: no unwinding, no finalisers, no teardown racing XLA threads. Nothing is lost
    by skipping them: every file the run writes is written atomically (temporary file + rename), and
    :func:`pifs_jax.reproduce.run_reproduction` keeps the folder consistent at every instant
    (``INCOMPLETE.md`` names what was running, a previous report is already ``REPORT.stale.md``),
    so there is nothing left to write but the message. ``jax.effects_barrier()`` is not called:
    waiting for the running computation would only delay the exit, its results being discarded.

    Installed only in the main thread (``signal.signal`` works nowhere else); the previous handler
    is restored afterwards, so ``pifs_jax.cli.main`` called in-process leaves no trace.
    """

    def on_sigint(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the exit
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            newline = "\n" if progress else ""  # end the progress bar's line
            sys.stderr.write(f"{newline}{PROG} reproduce: interrupted (see INCOMPLETE.md in the report folder)\n")
            sys.stderr.flush()
        os._exit(130)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run(args: argparse.Namespace) -> int:
    from pifs_jax import reproduce

    # --only and --experiments-dir are checked by the library, before any experiment runs
    with _exit_at_once_on_interrupt(progress=not args.no_progress):
        report = reproduce.run_reproduction(
            args.out,
            args.only,
            args.quick,
            full=args.full,
            retrain=args.retrain,
            experiments_dir=args.experiments_dir,
            progress=not args.no_progress,
            command=command_line(args.argv),
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
