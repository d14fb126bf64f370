"""The iteration loop shared by training and schedule optimisation.

:func:`run_loop` applies a compiled ``step(state) -> (state, metrics)`` from a start to a stop
step, with a tqdm progress bar, metrics fetched from the device in batches (every
``report_every`` steps, or every step when a callback wants them), a divergence check on every
step's metrics, a checkpoint (:mod:`pifs_jax.checkpoint`) every ``every`` steps and at the end,
and on ``KeyboardInterrupt`` a checkpoint of the last completed step before the interrupt is
re-raised. The loop adds no randomness and no state of its own, so a run resumed from any of its
checkpoints reproduces the uninterrupted one bit for bit when ``step`` is deterministic.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax

from pifs_jax._validation import check_positive_int
from pifs_jax.checkpoint import remove_partial_writes, save_checkpoint, write_error

__all__ = ["Checkpointing", "deferred_interrupt", "run_loop"]

#: One fetched step: ``(step number after the update, {metric: float})``.
Record = tuple[int, dict[str, float]]


def _identity(state: Any) -> Any:
    return state


class Checkpointing(NamedTuple):
    """Where and how often :func:`run_loop` checkpoints.

    Attributes:
      path: the checkpoint file.
      every: checkpoint after every this many steps (and after the last one).
      config: the run's identity, stored in the checkpoint (:func:`pifs_jax.checkpoint.save_checkpoint`).
      contents: ``contents(state)`` is the pytree written (default: the state itself).
    """

    path: Path
    every: int
    config: Mapping[str, Any]
    contents: Callable[[Any], Any] = _identity

    def save(self, state: Any) -> Path:
        """Write ``contents(state)`` with ``config`` to ``path`` (atomic).

        Raises:
          WriteError: the write failed (an ``OSError``: a full disk, ...); the message says why
            and that the previous checkpoint is intact (:func:`pifs_jax.checkpoint.write_error`).
        """
        contents = self.contents(state)
        try:
            return save_checkpoint(self.path, contents, config=self.config)
        except OSError as exc:
            raise write_error(exc, self.path, self.path) from exc


@contextlib.contextmanager
def deferred_interrupt(notice: str = "") -> Iterator[Callable[[], bool]]:
    """While active, Ctrl-C (SIGINT) asks the work to stop at its next safe point instead of interrupting it.

    Yields ``requested()``: whether Ctrl-C was pressed. The work checks it between its pieces
    (e.g. chunks of trajectories, each one compiled call) and stops there, so no computation is
    left running while Python unwinds, and a ``KeyboardInterrupt`` raised inside JAX (where it
    may be swallowed) is avoided. The first Ctrl-C prints ``notice`` on stderr (if given) and
    restores the previous handler: a second Ctrl-C interrupts at once.

    Only in the main thread with Python's own handler installed (``signal.default_int_handler``);
    otherwise nothing changes and ``requested()`` stays ``False``.

    Args:
      notice: the message printed on stderr at the first Ctrl-C (default ``""``: none).

    Yields:
      ``requested()``, a function of no arguments returning whether Ctrl-C was pressed. The
      previous SIGINT handler is restored on exit.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is not signal.default_int_handler:
        yield lambda: False
        return
    pressed: list[bool] = []

    def on_sigint(signum, frame):
        pressed.append(True)
        signal.signal(signal.SIGINT, previous)
        if notice:
            sys.stderr.write(f"\n{notice}\n")
            sys.stderr.flush()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def _default_divergence(step: int, values: dict[str, float]) -> BaseException:
    return FloatingPointError(f"diverged at step {step}: {values}")


def run_loop(
    step: Callable[[Any], tuple[Any, Mapping[str, jax.Array]]],
    state: Any,
    *,
    start: int,
    stop: int,
    checkpoint: Checkpointing | None = None,
    report_every: int = 1,
    on_report: Callable[[list[Record]], None] | None = None,
    callback: Callable[[int, dict[str, float]], Any] | None = None,
    diverged: Callable[[int, dict[str, float]], BaseException] = _default_divergence,
    watch: Sequence[str] | None = None,
    progress: bool = True,
    description: str = "",
    show: Sequence[str] = ("loss",),
) -> Any:
    """Apply ``state, metrics = step(state)`` for the steps ``start + 1 .. stop``; return the last state.

    Metrics (scalars) stay on the device until a report: after every ``report_every`` steps, after
    the last one, before every checkpoint, and after every step when ``callback`` is given. A report
    fetches them, raises ``diverged(step, values)`` for the first step with a non-finite value (of
    the ``watch``ed metrics), then
    calls ``on_report(records)`` with every step since the last report and ``callback(step, values)``
    for each.

    Args:
      step: compiled update, ``step(state) -> (state, metrics)``.
      state: the state after ``start`` steps (fresh or loaded from a checkpoint).
      start, stop: steps already taken, and the total to reach.
      checkpoint: where and how often to save (``None``: never). Also saved when the file does
        not exist after the loop (``start == stop``) and on ``KeyboardInterrupt``.
      report_every: steps between reports.
      on_report: receives the fetched records (e.g. a history or a log file).
      callback: ``callback(step, metrics)`` after every step (forces a fetch per step).
      diverged: builds the exception raised for non-finite metrics.
      watch: the metrics checked for finiteness (``None``: all).
      progress: show a tqdm bar; description: its label; show: metrics shown beside it.
    """
    from tqdm import tqdm  # text bar: works in terminals and notebooks without ipywidgets

    report_every = check_positive_int(report_every, name="report_every")
    pending: list[tuple[int, Mapping[str, jax.Array]]] = []

    def report(bar) -> None:
        if not pending:
            return
        fetched = jax.device_get(pending)
        pending.clear()
        records = [(done, {k: float(v) for k, v in metrics.items()}) for done, metrics in fetched]
        for done, values in records:
            if not all(math.isfinite(v) for k, v in values.items() if watch is None or k in watch):
                raise diverged(done, values)
        if on_report is not None:
            on_report(records)
        if callback is not None:
            for done, values in records:
                callback(done, values)
        last = records[-1][1]
        bar.set_postfix({k: f"{last[k]:.4g}" for k in show if k in last}, refresh=False)

    if checkpoint is not None:
        remove_partial_writes(checkpoint.path)
    completed = start
    with tqdm(total=stop, initial=start, disable=not progress, desc=description, unit="step", leave=False) as bar:
        try:
            for k in range(start, stop):
                new_state, metrics = step(state)
                pending.append((k + 1, metrics))
                state, completed = new_state, k + 1
                bar.update(1)
                at_checkpoint = checkpoint is not None and (completed % checkpoint.every == 0 or completed == stop)
                if callback is not None or at_checkpoint or completed % report_every == 0 or completed == stop:
                    report(bar)
                if checkpoint is not None and at_checkpoint:
                    checkpoint.save(state)
        except KeyboardInterrupt:
            pending[:] = [(done, metrics) for done, metrics in pending if done <= completed]  # state not updated yet
            report(bar)
            if checkpoint is not None and completed > start:
                checkpoint.save(state)
            raise
    if checkpoint is not None and not Path(checkpoint.path).exists():
        checkpoint.save(state)
    return state
