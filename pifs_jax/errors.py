"""The package's error type for bad input.

Every check at a public boundary raises :class:`ArgumentError`, a ``ValueError`` that carries the
name of the offending argument in ``.argument`` (a Python parameter such as ``"sched"``, or a
command-line option such as ``"--steps"``). Callers that need the argument (the command line maps
it to the option the user typed) read the attribute; they never parse the message text.

A multi-process run whose processes do not all join raises :class:`ProcessGroupError`, and a
failed write of a run's files (a full disk) :class:`WriteError`; both are :class:`ArgumentError`
naming the option to look at.

A computation whose concrete result turns non-finite (a chain, a spectrum) raises
:class:`NonFiniteError`, both an :class:`ArgumentError` (naming the argument to blame: the
denoiser, the schedule, the initial state) and a ``FloatingPointError``.
"""

from __future__ import annotations

__all__ = ["ArgumentError", "NonFiniteError", "ProcessGroupError", "WriteError"]


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


class ProcessGroupError(ArgumentError):
    """The processes of a multi-process run did not all join (:func:`pifs_jax.sharding.initialize_processes`).

    Raised in bounded time instead of JAX's silent wait and abort: a peer that never came (the
    message names the missing process ids and how long was waited), no coordinator at the
    address, two processes with the same ``process_id``, or processes started with different
    ``num_processes``. ``.argument`` names what to check (``num_processes``, ``process_id``,
    ``coordinator`` or ``init_timeout``).
    """


class WriteError(ArgumentError):
    """Writing a run's file failed (a full disk, a quota, a file system gone read-only).

    The message names the file, the operating system's reason, and the state of the run's
    checkpoint (the previous one intact, so the run can be resumed). The ``OSError`` is the
    ``__cause__``. ``.argument`` is the output folder's argument (``out_dir``: ``--out``).
    """
