"""One policy for every output folder: a lock, an in-progress marker and staged results.

Every command that writes a folder (``pifs-jax geometry``, ``optimize``, ``train``, ``analyze``,
``sample``, ``reproduce``) and every experiment that writes one goes through :class:`RunFolder`:

- **Lock.** Opening takes an exclusive ``fcntl.flock`` on :data:`LOCK_NAME` inside the folder,
  without waiting, and holds it until the folder is closed. A second process on a folder in use
  is refused at once (:class:`~pifs_jax.errors.ArgumentError` naming the folder and saying it is
  in use by another process). The kernel releases the lock when the process dies, so a killed
  run never leaves the folder locked.
- **In-progress marker.** :data:`MARKER_NAME` is written once the lock is held and removed when
  the folder is closed, normally or by an exception. Found by the next opener (who holds the lock,
  so its writer is dead), it is *stale*: the run that wrote it was killed. It is reported
  (:attr:`RunFolder.stale`, and one note through ``report``) and handled by the policy.
- **Staging.** Results are written into a staging folder inside the folder (:meth:`RunFolder.staged`)
  and moved into place together when the block ends without an exception: a kill, a full disk or
  an exception before that leaves the previous results untouched. The move is journalled in the
  marker (state ``"committing"``, the files to move and to remove), and a run killed during the
  move is finished by the next opener, so the folder never mixes old and new results.
- **Policy.** ``"refuse"``: a folder holding any file of the run (``progress`` or ``results``) or
  a stale marker is refused. ``"resume"``: the folder must hold ``checkpoint``; the run continues
  it, and before it changes the checkpoint it moves the results that describe the state it
  continues from into a subfolder (:meth:`RunFolder.set_aside`), so they never sit unmarked beside
  a checkpoint they do not describe. ``"overwrite"``: the run starts afresh; with ``progress`` files
  (a checkpoint, a log: written in place while the run goes) the old run's files are deleted at
  once, since new progress beside old results would mix two runs; without, the old results stay
  until the new ones replace them.

Example:
  >>> with RunFolder("out/geometry", "overwrite", results=("geometry.json",)) as folder:
  ...     with folder.staged() as stage:
  ...         write_result_json(stage / "geometry.json", data, config=config)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pifs_jax.errors import ArgumentError
from pifs_jax.results import atomic_write_text

__all__ = ["LOCK_NAME", "MARKER_NAME", "POLICIES", "STAGING_PREFIX", "RunFolder", "StaleRun", "policy_for"]

#: The lock file (held with ``flock`` while a process uses the folder; removed on close).
LOCK_NAME = ".pifs-jax.lock"
#: The in-progress marker (JSON with pid, command, start time and state; removed on close).
MARKER_NAME = ".pifs-jax-in-progress.json"
#: Prefix of the staging folders inside the folder.
STAGING_PREFIX = ".pifs-jax-staging-"
#: What a run does with a folder that already holds a run.
POLICIES = ("refuse", "resume", "overwrite")


class StaleRun(NamedTuple):
    """What the marker of a killed run says."""

    pid: int | None
    """The process that was killed."""
    command: str | None
    """Its command line, when it gave one."""
    started: str | None
    """When it started (ISO 8601, UTC)."""
    state: str
    """``"running"`` (killed while working) or ``"committing"`` (killed while moving its results in)."""

    def describe(self) -> str:
        """``"process 123, started 2026-12-06T10:00:00+00:00"``."""
        parts = [f"process {self.pid}" if self.pid is not None else "an unknown process"]
        if self.started:
            parts.append(f"started {self.started}")
        return ", ".join(parts)


def policy_for(*, resume: bool, overwrite: bool) -> str:
    """The policy of the ``resume``/``overwrite`` flags (``"refuse"`` when neither is set).

    Args:
      resume: continue the run in the folder.
      overwrite: start afresh, replacing the run in the folder.

    Returns:
      ``"resume"``, ``"overwrite"`` or ``"refuse"`` (one of :data:`POLICIES`).

    Raises:
      ArgumentError: (``"overwrite"``) both are set.
    """
    if resume and overwrite:
        raise ArgumentError("overwrite", "cannot be combined with resume (continue the run, or start afresh)")
    return "resume" if resume else "overwrite" if overwrite else "refuse"


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


class RunFolder:
    """An output folder used by one process at a time, under a policy, with staged results.

    Use as a context manager (or :meth:`open` / :meth:`close`). Opening creates the folder,
    takes the lock, handles a stale marker and applies the policy, all before the caller does any
    work; a refusal leaves a folder it created removed again.

    Args:
      out: the folder (created with its parents if missing).
      policy: one of :data:`POLICIES`.
      results: the names (paths relative to ``out``) of the result files the run writes through
        :meth:`staged`; a commit removes those of them the new run did not write.
      progress: files the run writes in place while it goes (checkpoint, log, its configuration).
      checkpoint: the file ``"resume"`` continues from (required for that policy).
      command: the command line, recorded in the marker.
      argument: the name errors about the folder carry (``"out"``; the command line shows ``--out``).
      report: called with one line for each note (a stale marker); default: ``note: ...`` on stderr.

    Raises (on opening):
      ArgumentError: ``argument``: ``out`` is a file, is in use by another process, or holds a run
        under ``"refuse"``; ``"resume"``: nothing to resume; ``"policy"``: an unknown policy, or
        ``"resume"`` without ``checkpoint``.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        policy: str = "refuse",
        *,
        results: Sequence[str] = (),
        progress: Sequence[str] = (),
        checkpoint: str | None = None,
        command: str | None = None,
        argument: str = "out",
        report: Callable[[str], None] | None = _note,
    ):
        if policy not in POLICIES:
            raise ArgumentError("policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
        if policy == "resume" and checkpoint is None:
            raise ArgumentError("policy", "'resume' needs the checkpoint file the run continues from")
        self.out = Path(out)
        self.policy = policy
        self.results = tuple(results)
        self.progress = tuple(progress)
        self.checkpoint = checkpoint
        self.command = command
        self.argument = argument
        self.report = report or (lambda text: None)
        self.stale: StaleRun | None = None
        """The killed run whose marker this folder held when opened, or ``None``."""
        self.written: list[Path] = []
        """The result files moved into place by :meth:`staged`, in order."""
        self._fd: int | None = None
        self._started = ""
        self._created: list[Path] = []

    # ------------------------------------------------------------------ opening and closing

    def __enter__(self) -> RunFolder:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> RunFolder:
        """Create the folder, lock it, handle a stale marker and apply the policy (see the class)."""
        if self.out.exists() and not self.out.is_dir():
            raise ArgumentError(self.argument, f"expected a folder, got the existing file {str(self.out)!r}")
        created = self._created = self._create()
        try:
            self._lock()
            self.stale = self._recover()
            self._apply_policy()
            self._started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            self._write_marker("running")
        except BaseException:
            self._unlock()
            for folder in created:  # a refused run leaves no folder it created
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        return self

    def close(self) -> None:
        """Remove the marker and any staging folder, release the lock, and remove the folders
        :meth:`open` created if they stayed empty (idempotent)."""
        if self._fd is None:
            return
        for stage in self.out.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stage, ignore_errors=True)
        (self.out / MARKER_NAME).unlink(missing_ok=True)
        self._unlock()
        for folder in self._created:  # a run that wrote nothing leaves no folder it created
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _create(self) -> list[Path]:
        """``mkdir -p`` the folder; the folders created, innermost first."""
        missing = []
        folder = self.out
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        self.out.mkdir(parents=True, exist_ok=True)
        return missing

    def _lock(self) -> None:
        path = self.out / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip()
                os.close(fd)
                raise ArgumentError(
                    self.argument,
                    f"{str(self.out)!r} is in use by another process"
                    + (f" (pid {holder})" if holder.isdigit() else "")
                    + "; wait for it to finish or choose another folder",
                ) from None
            try:  # the holder removes the file on release: make sure ours is still the one at `path`
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is None:
            return
        (self.out / LOCK_NAME).unlink(missing_ok=True)  # while still holding it (see _lock)
        os.close(self._fd)  # releases the flock
        self._fd = None

    # ------------------------------------------------------------------ marker and policy

    def _write_marker(self, state: str, **extra: Any) -> None:
        document = {
            "pid": os.getpid(),
            "command": self.command,
            "started": self._started,
            "state": state,
            **extra,
        }
        atomic_write_text(self.out / MARKER_NAME, json.dumps(document, indent=2) + "\n")

    def _recover(self) -> StaleRun | None:
        """Read a stale marker, finish a move it journals, and drop leftover staging folders."""
        marker = self.out / MARKER_NAME
        stale = None
        if marker.exists():
            try:
                document = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                document = {}
            state = str(document.get("state", "running"))
            stale = StaleRun(document.get("pid"), document.get("command"), document.get("started"), state)
            stage = self.out / str(document.get("staging", ""))
            if state == "committing" and document.get("staging") and stage.is_dir():
                self._move_in(stage, list(document.get("files", [])), list(document.get("remove", [])))
                self.report(
                    f"{str(self.out)!r}: an interrupted run ({stale.describe()}) was killed while moving its "
                    "results into place; the move is now complete"
                )
            elif self.policy != "refuse":  # under "refuse" the error names the interrupted run
                self.report(
                    f"{str(self.out)!r}: an interrupted run ({stale.describe()}) did not finish; "
                    + ("resuming from its checkpoint" if self.policy == "resume" else "starting afresh")
                )
            marker.unlink()
        for leftover in self.out.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return stale

    def _existing(self) -> list[str]:
        return [name for name in (*self.progress, *self.results) if (self.out / name).exists()]

    def _apply_policy(self) -> None:
        existing = self._existing()
        if self.policy == "refuse" and (existing or self.stale):
            if self.checkpoint in existing:  # named first: it is what --resume continues
                existing.remove(self.checkpoint)
                existing.insert(0, self.checkpoint)
            shown = ", ".join(existing[:2]) + (", ..." if len(existing) > 2 else "")
            what = "a run" + (f" ({shown})" if shown else "")
            if self.stale is not None:
                what += f" that was interrupted ({self.stale.describe()})"
            how = "pass resume=True (--resume) to continue it, " if self.checkpoint else ""
            raise ArgumentError(
                self.argument,
                f"{str(self.out)!r} already holds {what}; {how}overwrite=True (--overwrite) to start afresh "
                "(deleting it), or choose another folder",
            )
        if self.policy == "resume":
            assert self.checkpoint is not None
            if not (self.out / self.checkpoint).is_file():
                raise ArgumentError(
                    "resume",
                    f"nothing to resume: {str(self.out)!r} holds no checkpoint ({self.checkpoint}); "
                    "drop --resume (resume=False) to start a new run",
                )
        if self.policy == "overwrite" and self.progress:
            for name in existing:
                path = self.out / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    # ------------------------------------------------------------------ results set aside

    def set_aside(self, names: Sequence[str], into: str) -> list[Path]:
        """Move the files among ``names`` that the folder holds into its subfolder ``into``; the paths moved to.

        For results that describe an earlier state of a run that continues (the samples and
        scores of the step a resumed run starts from): they are kept, but no longer where the
        continuing run's results go, so no reader takes them for that run's. Each file is moved
        with one ``os.replace`` (atomic), in the order of ``names``, replacing a namesake already
        in ``into``; a kill part-way leaves every file whole, either still in place or moved.

        Raises:
          ArgumentError: ``"folder"``: the folder is not open; ``"into"``: not a relative path
            inside the folder.
        """
        if self._fd is None:
            raise ArgumentError("folder", f"{str(self.out)!r} is not open (use RunFolder as a context manager)")
        target = self.out / into
        if Path(into).is_absolute() or ".." in Path(into).parts or target.resolve() == self.out.resolve():
            raise ArgumentError("into", f"expected a subfolder of {str(self.out)!r}, got {into!r}")
        moved = []
        for name in names:
            source = self.out / name
            if source.is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target / name)
                moved.append(target / name)
        return moved

    # ------------------------------------------------------------------ staged results

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """A staging folder for the results; moved into place together when the block ends normally.

        Write the result files into the yielded folder under their final names (subfolders
        allowed). When the block raises, the staging folder is deleted and the folder keeps its
        previous results. When it ends normally, every staged file replaces its namesake, and
        the files of ``results`` the block did not write are removed (they described another
        run); the paths moved in are appended to :attr:`written`.
        """
        if self._fd is None:
            raise ArgumentError("folder", f"{str(self.out)!r} is not open (use RunFolder as a context manager)")
        stage = Path(tempfile.mkdtemp(dir=self.out, prefix=STAGING_PREFIX))
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        remove = [name for name in self.results if name not in files and (self.out / name).exists()]
        self._write_marker("committing", staging=stage.name, files=files, remove=remove)
        self._move_in(stage, files, remove)
        self._write_marker("running")
        self.written += [self.out / name for name in files]

    def _move_in(self, stage: Path, files: list[str], remove: list[str]) -> None:
        """Move ``files`` from ``stage`` into the folder and remove ``remove``; safe to repeat."""
        for name in files:
            source = stage / name
            if source.exists():
                (self.out / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, self.out / name)
        for name in remove:
            (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
