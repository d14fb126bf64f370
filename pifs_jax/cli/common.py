"""What every ``pifs-jax`` subcommand shares: the registry, the error type and the option types.

A subcommand module (:mod:`pifs_jax.cli.geometry`, ...) imports only this module and defines a
:class:`Subcommand` record; :mod:`pifs_jax.cli` registers the records in :data:`SUBCOMMANDS` and
builds the parser from them. Nothing heavy is imported here, so ``pifs-jax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import NamedTuple

from pifs_jax.errors import ArgumentError

__all__ = [
    "ARGUMENT_OPTIONS",
    "PROG",
    "SUBCOMMANDS",
    "Subcommand",
    "UsageError",
    "command_line",
    "finite_float",
    "non_negative_int",
    "option_for",
    "output_dir",
    "positive_int",
    "register_subcommand",
    "usage_error_for",
]

#: The program name in usage lines and messages.
PROG = "pifs-jax"


class UsageError(ArgumentError):
    """Bad command-line input; ``option`` (= ``argument``) names the offending option (``--steps``).

    ``str(error)`` is ``"{option}: {detail}"``; the command prints ``argument {option}: {detail}``.
    """

    def __init__(self, option: str, message: str):
        super().__init__(option, message)

    @property
    def option(self) -> str:
        """The option the user typed, e.g. ``"--steps"``."""
        return self.argument


class Subcommand(NamedTuple):
    """One ``pifs-jax`` subcommand.

    Attributes:
      name: the word on the command line.
      help: one line for ``pifs-jax --help``.
      description: the paragraph at the top of ``pifs-jax NAME --help``.
      epilog: examples and notes at the bottom of ``pifs-jax NAME --help`` (kept verbatim).
      add_arguments: declares the options on the subcommand's parser.
      run: does the work; returns the exit status (0 success, 1 failure, 2 bad input).
    """

    name: str
    help: str
    description: str
    epilog: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: The registered subcommands, in ``--help`` order.
SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(subcommand: Subcommand) -> Subcommand:
    """Add ``subcommand`` to :data:`SUBCOMMANDS` (a name may be registered once).

    Args:
      subcommand: the :class:`Subcommand` record.

    Returns:
      ``subcommand`` itself.

    Raises:
      ArgumentError: naming ``subcommand`` when a subcommand of its name is already registered.
    """
    if subcommand.name in SUBCOMMANDS:
        raise ArgumentError("subcommand", f"{subcommand.name!r} is already registered")
    SUBCOMMANDS[subcommand.name] = subcommand
    return subcommand


#: The library arguments whose option is not ``--`` + the argument with dashes (``alpha_bar_T`` ->
#: ``--alpha-bar-T`` needs no entry). :func:`pifs_jax.cli.main` maps every
#: :class:`~pifs_jax.errors.ArgumentError` through :func:`option_for`, once, for every command.
ARGUMENT_OPTIONS = {
    "num_steps": "--steps",
    "num_inference_steps": "--steps",
    "grid": "--steps",
    "learning_rate": "--lr",
    "n_knots": "--knots",
    "s": "--offset",
    "name": "--schedule",
    "out": "--out",
    "out_dir": "--out",
    "checkpoint_dir": "--out",
}


def option_for(argument: str | None, options: Collection[str]) -> str | None:
    """The command-line option of a library argument, if the command has it.

    Args:
      argument: the ``argument`` of a :class:`~pifs_jax.errors.ArgumentError` (``"num_steps"``), or ``None``.
      options: the options of the command that ran (``{"--steps", "--out", ...}``).

    Returns:
      :data:`ARGUMENT_OPTIONS`'s entry, or ``--`` + the argument with dashes for underscores,
      when that option is in ``options``; otherwise ``None`` (the message is shown as it is).
    """
    if argument is None:
        return None
    if argument.startswith("--"):
        return argument
    option = ARGUMENT_OPTIONS.get(argument, "--" + argument.replace("_", "-"))
    return option if option in options else None


def usage_error_for(exc: ValueError, options: Mapping[str, str], default: str | None = None) -> UsageError | None:
    """The :class:`UsageError` for a library error, naming the option the user typed.

    The library's :class:`~pifs_jax.errors.ArgumentError` carries the Python argument
    (``exc.argument``, e.g. ``"alpha_bar_T"``); ``options`` maps it to the option
    (``"--alpha-bar-T"``). A plain ``ValueError`` (no ``.argument``) or an argument missing from
    ``options`` is reported under ``default`` with the whole message, or not at all (``None``)
    when there is no ``default``.

    Args:
      exc: the error the library raised.
      options: Python argument name -> command-line option.
      default: the option to blame when ``exc`` names none of ``options``.

    Returns:
      The error to raise, or ``None`` (re-raise ``exc`` unchanged).
    """
    argument = getattr(exc, "argument", None)
    option = None if argument is None else options.get(argument)
    if option is not None:
        return UsageError(option, getattr(exc, "detail", str(exc)))
    if default is not None:
        return UsageError(default, str(exc))
    return None


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """Option type: an integer >= 1.

    Args:
      text: the option's value as typed.

    Returns:
      the integer.

    Raises:
      argparse.ArgumentTypeError: ``text`` is not an integer, or is below 1 (argparse reports it as a
        usage error naming the option).
    """
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """Option type: an integer >= 0.

    Args:
      text: the option's value as typed.

    Returns:
      the integer.

    Raises:
      argparse.ArgumentTypeError: ``text`` is not an integer, or is negative (argparse reports it as a
        usage error naming the option).
    """
    return _int_at_least(text, 0, "a non-negative integer")


def finite_float(text: str) -> float:
    """Option type: a finite number (no ``nan``, no ``inf``).

    Args:
      text: the option's value as typed.

    Returns:
      the number.

    Raises:
      argparse.ArgumentTypeError: ``text`` is not a number, or not a finite one (argparse reports it as a
        usage error naming the option).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def output_dir(text: str) -> Path:
    """Option type: a folder the command can write into, checked before any work is done.

    Accepts an existing folder or a path whose nearest existing ancestor is a writable folder
    (the command creates the rest). Refuses an existing file, an ancestor that is a file, and a
    folder that cannot be written (no permission, or a read-only file system). The check is real:
    the folder is created and a temporary file written into it and removed (folders it had to
    create are removed again), so a path no permission bit reveals (``/proc/x``, a full disk) is
    refused before any work.

    Args:
      text: the option's value as typed (``~`` is expanded).

    Returns:
      the folder's path.

    Raises:
      argparse.ArgumentTypeError: for each refusal above (argparse reports it as a usage error naming the
        option).
    """
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the existing file {text!r}")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"cannot write into {str(ancestor)!r} (no permission, or a read-only file system)"
        )
    _try_writing_into(path, text)
    return path


def _try_writing_into(path: Path, text: str) -> None:
    """Create ``path`` and a temporary file in it, then remove both (only what was created here)."""
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot create {text!r} or a file in it: {err.strerror or err}") from None
    finally:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def command_line(argv: list[str]) -> str:
    """The command as the user could retype it: ``pifs-jax ARGV...`` with shell quoting.

    Args:
      argv: the arguments after the program name.

    Returns:
      the command line as one string (``shlex.join``).
    """
    return shlex.join([PROG, *argv])
