"""The ``pifs-jax`` command.

Subcommands live in a registry (:data:`SUBCOMMANDS`): each is a :class:`Subcommand` record with
an ``add_arguments(parser)`` function that declares its options and a ``run(args) -> int``
function that does the work. Each subcommand is one module of this package
(:mod:`~pifs_jax.cli.geometry`, :mod:`~pifs_jax.cli.reproduce`, :mod:`~pifs_jax.cli.optimize`,
:mod:`~pifs_jax.cli.train`, :mod:`~pifs_jax.cli.sample`, :mod:`~pifs_jax.cli.analyze`) that imports only :mod:`pifs_jax.cli.common` and defines its record
``SUBCOMMAND``; this module registers them. Adding a command means writing such a module and
adding it to the registration below; :func:`build_parser` and :func:`main` need no change.

Error handling: bad input exits with status 2 and one line ``pifs-jax CMD: error: argument
--OPTION: ...`` on stderr, never a traceback. Run functions report such input by raising
:class:`UsageError` (naming the option); an :class:`~pifs_jax.errors.ArgumentError` from the
library is printed the same way, its ``argument`` mapped to the option once, here
(:func:`~pifs_jax.cli.common.option_for`), and any other ``ValueError`` as its message. Set ``PIFS_JAX_TRACEBACK=1`` to see the traceback instead.

Examples::

  pifs-jax geometry --schedule cosine --offset 0 --out out/cosine
  pifs-jax geometry --schedule linear --steps 50 --spacing trailing --out out/linear50
  pifs-jax reproduce --out results --only schedule_geometry
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from pifs_jax.cli import analyze, design_grid, geometry, optimize, reproduce, sample, train
from pifs_jax.cli.common import PROG, SUBCOMMANDS, Subcommand, UsageError, option_for, register_subcommand
from pifs_jax.geometry import geometry_arrays  # its home before it moved to the library

__all__ = ["SUBCOMMANDS", "Subcommand", "UsageError", "build_parser", "geometry_arrays", "main", "register_subcommand"]

for _command in (geometry, reproduce, optimize, train, sample, analyze, design_grid):  # --help order
    register_subcommand(_command.SUBCOMMAND)
del _command


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line: ``PROG: error: MESSAGE (see PROG --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered :class:`Subcommand`."""
    from pifs_jax import __version__

    # the first example of each subcommand (its epilog's lines 1-2: a comment and a command)
    examples = "\n\n".join(
        "\n".join(line.strip() for line in sub.epilog.splitlines()[1:3]) for sub in SUBCOMMANDS.values()
    )
    parser = _Parser(
        prog=PROG,
        description="Denoising diffusion as Partitioned Iterated Function Systems: schedule geometry, "
        "chain dynamics and schedule design in JAX.",
        epilog="examples:\n"
        + textwrap.indent(examples, "  ")
        + f"\n\nRun '{PROG} COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub_parser = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub_parser)
    return parser


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run ``pifs-jax`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Args:
      argv: the arguments after the program name (``["geometry", "--out", "out/x"]``); default ``None``:
        ``sys.argv[1:]``.

    Returns:
      0 on success (also after ``--help`` and ``--version``), 1 when a command fails (e.g. a failed
      experiment), 2 on bad input (with a one-line ``error:`` message on stderr), 130 when interrupted.

    Raises:
      ValueError: only with the environment variable ``PIFS_JAX_TRACEBACK`` set: the command's error,
        with its traceback, instead of the one-line message.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, and argparse's own errors
        return _exit_status(exc)
    args.argv = argv
    command = SUBCOMMANDS[args.command]
    options = {"--" + name.replace("_", "-") for name in vars(args)}
    try:
        return int(command.run(args) or 0)
    except ValueError as exc:
        if os.environ.get("PIFS_JAX_TRACEBACK"):
            raise
        option = option_for(getattr(exc, "argument", None), options)
        if option is not None:  # an ArgumentError: the option the user typed, and the library's detail
            print(
                f"{PROG} {command.name}: error: argument {option}: {getattr(exc, 'detail', exc)} (see '{PROG} {command.name} --help')",
                file=sys.stderr,
            )
        else:
            message = " ".join(str(exc).split())
            print(f"{PROG} {command.name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {command.name}: interrupted", file=sys.stderr)
        return 130
