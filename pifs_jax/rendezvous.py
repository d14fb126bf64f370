"""The pre-flight of a multi-process run: every process checks in with process 0 before JAX joins them.

``jax.distributed.initialize`` waits for the other processes silently and, when one never comes,
ends the process from C++ after its ``initialization_timeout`` (300 s by default) with a stack
trace and no Python exception; two processes started with the same ``process_id`` leave one of
them aborted and the other waiting. :func:`rendezvous`, called first by
:func:`pifs_jax.sharding.initialize_processes`, turns each of these into a
:class:`~pifs_jax.errors.ProcessGroupError` in bounded time, naming what was waited for:

- process 0 listens on the coordinator's port and waits (``timeout`` seconds at most) for
  processes ``1 .. P-1``; it then names the ids still missing (and those it refused), and tells
  every process that did join;
- every other process connects (retrying until ``timeout``: process 0 may start later) and
  waits for process 0's word: a process that finds no coordinator says so;
- process 0 refuses a second process with an id that already joined, an id outside
  ``1 .. P-1``, and a process started with another ``num_processes``, with a message to that
  process; a second process 0 cannot listen on the port, which is in use, and says so.

A process with a duplicate id that arrives after the run has gathered finds nobody listening
(process 0 has handed the port to JAX): its error names that possibility.

Protocol, one line each way on one TCP connection per process, on the coordinator's port
(released before JAX's coordination service takes it)::

    process i -> 0:  PIFS-JAX-JOIN 1 <num_processes> <process_id>
    0 -> process i:  WAIT                       (joined)
                     GO                         (everyone joined: call jax.distributed.initialize)
                     ERROR <argument> <detail>  (refused, or the wait timed out)
"""

from __future__ import annotations

import errno
import select
import socket
import time

from pifs_jax.errors import ProcessGroupError

__all__ = ["JOIN_MAGIC", "rendezvous"]

#: The first words of a process's line to process 0 (protocol version 1).
JOIN_MAGIC = "PIFS-JAX-JOIN 1"
#: Seconds a joined process waits for process 0's word beyond its own ``timeout``.
_GRACE = 5.0
#: Seconds process 0 gives a new connection to send its line.
_LINE_WAIT = 5.0


def rendezvous(host: str, port: int, num_processes: int, process_id: int, *, timeout: float) -> None:
    """Gather the ``num_processes`` processes of a run at ``host:port`` (process 0's address).

    Returns once every process has joined (process 0 has released the port for JAX). Arguments
    are not checked here (:func:`pifs_jax.sharding.initialize_processes` checks them).

    Args:
      host: process 0's host name or address (where the other processes connect).
      port: the coordinator's port (process 0 listens on it, on every interface).
      num_processes: ``P``, the number of processes of the run.
      process_id: this process's id, in ``0 .. P-1``.
      timeout: seconds to wait at most: process 0 for the others, the others to reach process 0
        (and then ``timeout`` plus a short grace for process 0's word).

    Raises:
      ProcessGroupError: naming ``num_processes`` (processes missing after ``timeout`` seconds,
        or started with another ``num_processes``), ``process_id`` (a duplicate, or the port of
        process 0 in use), or ``coordinator`` (no process 0 answered, or process 0 went away).
    """
    address = f"{host}:{port}"
    if process_id == 0:
        _gather(port, num_processes, timeout, address)
    else:
        _join(host, port, num_processes, process_id, timeout, address)


def _line(conn: socket.socket) -> str:
    """One ``\\n``-terminated line (at most 4 KiB) from ``conn``; ``""`` if it closed first.

    Read a byte at a time, so that nothing after the line is consumed: two lines sent one after the
    other (``WAIT``, then ``GO``) may arrive in one segment, and each must be read on its own.
    """
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        byte = conn.recv(1)
        if not byte:
            return ""
        data += byte
    return data.decode("utf-8", "replace").strip()


def _send(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall((" ".join(text.split()) + "\n").encode("utf-8"))
    except OSError:
        pass  # the process went away: it learns nothing more


def _listen(port: int, address: str) -> socket.socket:
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        return socket.create_server(("", port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ProcessGroupError(
                "process_id",
                f"process 0 cannot listen on port {port} of {address}: the port is in use (another process "
                "was started with process_id 0 for this run, or another program holds the port: give every "
                "process its own process_id, or choose another port)",
            ) from None
        raise ProcessGroupError(
            "coordinator", f"process 0 cannot listen on port {port} of {address}: {exc.strerror or exc}"
        ) from None


def _gather(port: int, num_processes: int, timeout: float, address: str) -> None:
    """Process 0: wait for processes ``1 .. P-1``, then tell them to go (or why not)."""
    server = _listen(port, address)
    deadline = time.monotonic() + timeout
    joined: dict[int, tuple[socket.socket, str]] = {}
    refused: list[str] = []
    try:
        while len(joined) < num_processes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [i for i in range(1, num_processes) if i not in joined]
                came = ", ".join(["0 (this one)", *(f"{i} from {host}" for i, (_, host) in sorted(joined.items()))])
                detail = (
                    f"waited {timeout:g} s at {address} for process{'es' if len(missing) > 1 else ''} "
                    f"{', '.join(map(str, missing))} of the {num_processes}; joined: {came}"
                    + (f"; refused: {'; '.join(refused)}" if refused else "")
                    + ". Start every process with the same coordinator and num_processes and its own process_id "
                    f"in 0 .. {num_processes - 1}, or give them longer (init_timeout; on the command line "
                    "--init-timeout)"
                )
                for conn, _ in joined.values():
                    _send(conn, f"ERROR num_processes process 0 gave up: {detail}")
                raise ProcessGroupError("num_processes", detail)
            members = {conn: i for i, (conn, _) in joined.items()}
            readable, _, _ = select.select([server, *members], [], [], left)
            for conn in readable:
                if conn is not server:  # a joined process sends nothing more: it closed (ended)
                    i = members[conn]
                    refused.append(f"process {i} from {joined[i][1]} joined and went away")
                    del joined[i]
                    conn.close()
                    continue
                try:
                    new, peer = server.accept()
                except OSError:
                    continue
                problem = _admit(new, peer[0].removeprefix("::ffff:"), num_processes, joined, address)
                if problem is not None:
                    refused.append(problem)
                    new.close()
        for conn, _ in joined.values():
            _send(conn, "GO")
        for conn, _ in joined.values():  # let the others close first (their TIME_WAIT, not this port's)
            conn.settimeout(2.0)
            try:
                conn.recv(1)
            except OSError:
                pass
    finally:
        for conn, _ in joined.values():
            conn.close()
        server.close()


def _admit(
    conn: socket.socket, host: str, num_processes: int, joined: dict[int, tuple[socket.socket, str]], address: str
) -> str | None:
    """Read a new connection's line; register it in ``joined``, or refuse it (returns why, ``None`` if joined)."""
    conn.settimeout(_LINE_WAIT)
    try:
        words = _line(conn).split()
    except OSError:
        return f"a connection from {host} sent nothing"
    magic = JOIN_MAGIC.split()
    if words[: len(magic)] != magic or len(words) != len(magic) + 2 or not all(w.isdigit() for w in words[-2:]):
        return f"a connection from {host} that is not a process of a pifs-jax run"
    theirs, i = int(words[-2]), int(words[-1])
    if theirs != num_processes:
        _send(
            conn,
            f"ERROR num_processes process 0 at {address} runs {num_processes} processes, this one was started "
            f"with num_processes = {theirs}: give every process the same num_processes",
        )
        return f"process {i} from {host} with num_processes = {theirs}"
    if not 1 <= i < num_processes:
        _send(conn, f"ERROR process_id process 0 at {address} expects process_id 1 .. {num_processes - 1}, got {i}")
        return f"process {i} from {host}"
    if i in joined:
        _send(
            conn,
            f"ERROR process_id process {i} has already joined the run at {address} (from {joined[i][1]}): two "
            f"processes were started with process_id {i}; give every process its own process_id in "
            f"0 .. {num_processes - 1}",
        )
        return f"a second process {i} from {host}"
    _send(conn, "WAIT")
    conn.settimeout(None)
    joined[i] = (conn, host)
    return None


def _join(host: str, port: int, num_processes: int, process_id: int, timeout: float, address: str) -> None:
    """Process ``i > 0``: connect to process 0 (retrying until ``timeout``) and wait for its word."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            conn = socket.create_connection((host, port), timeout=max(0.1, min(left, 2.0)))
            break
        except OSError as exc:
            if time.monotonic() + 0.2 >= deadline:
                raise ProcessGroupError(
                    "coordinator",
                    f"no process 0 answered at {address} within {timeout:g} s ({exc.strerror or exc}): start "
                    "process 0 of the run (process_id 0) with this coordinator address, reachable from here, or "
                    "give it longer (init_timeout; on the command line --init-timeout); if process 0 runs, it "
                    "may have started the run without this process (was another process started with "
                    f"process_id {process_id}?)",
                ) from None
            time.sleep(0.2)
    with conn:
        conn.settimeout(timeout + _GRACE)
        try:
            conn.sendall(f"{JOIN_MAGIC} {num_processes} {process_id}\n".encode())
            reply = _line(conn)
            if reply == "WAIT":
                reply = _line(conn)
        except OSError as exc:
            what = "nothing" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise ProcessGroupError(
                "coordinator",
                f"process {process_id} joined process 0 at {address} but then heard {what} within "
                f"{timeout + _GRACE:g} s (give every process the same init_timeout)",
            ) from None
    if reply == "GO":
        return
    if reply.startswith("ERROR "):
        _, argument, detail = [*reply.split(" ", 2), "", ""][:3]
        raise ProcessGroupError(argument or "coordinator", detail)
    if not reply:
        raise ProcessGroupError("coordinator", f"process 0 at {address} closed the connection (it ended)")
    raise ProcessGroupError(
        "coordinator", f"something else answers at {address} ({reply[:60]!r}): not process 0 of a pifs-jax run"
    )
