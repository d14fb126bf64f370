"""The package's error type for bad input.

Every check at a public boundary raises :class:`ArgumentError`, a ``ValueError`` that carries the
name of the offending argument in ``.argument`` (a Python parameter such as ``"sched"``, or a
command-line option such as ``"--steps"``). Callers that need the argument (the command line maps
it to the option the user typed) read the attribute; they never parse the message text.

A computation whose concrete result turns non-finite (a chain, a spectrum) raises
:class:`NonFiniteError`, both an :class:`ArgumentError` (naming the argument to blame: the
denoiser, the schedule, the initial state) and a ``FloatingPointError``.
"""

from __future__ import annotations

__all__ = ["ArgumentError", "NonFiniteError"]


class ArgumentError(ValueError):
    """Bad value for a named argument.

    ``str(error)`` is ``"{argument}: {detail}"``, the form every message of the package takes.

    Attributes:
      argument: the argument (or option) the error concerns, e.g. ``"grid"`` or ``"--lr"``.
      detail: what was expected and what was received, without the argument's name.
    """

    def __init__(self, argument: str, detail: str):
        super().__init__(f"{argument}: {detail}")
        self.argument = argument
        self.detail = detail

    def __reduce__(self):  # picklable across processes (pytest-xdist, multiprocessing)
        return (type(self), (self.argument, self.detail))


class NonFiniteError(ArgumentError, FloatingPointError):
    """A computation produced NaN or infinity; ``.argument`` names the input that caused it.

    Raised by the eager entry points of the DDIM chain and the Lyapunov spectra after the
    computation (on its concrete result), with the first step that went non-finite in the message.
    Catch it as ``FloatingPointError`` or as ``ValueError`` (through :class:`ArgumentError`).
    """
