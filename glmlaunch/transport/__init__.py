"""Transports: run shell commands on many hosts in parallel, with timeouts and per-host results.

A transport knows how to reach a node (SSH through Fabric, ``srun`` inside a Slurm job, or a
local subprocess); it knows nothing about Ray. :class:`RemoteResult` is one host's outcome;
``run_many`` never raises for a host failure, it returns it, so that callers can name every host
that failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Target:
    """Where to run: ``name`` (as the user wrote it, e.g. an ssh_config alias), ``address``
    (the node's cluster IP), optional ssh user and port."""

    name: str
    address: str
    ssh_user: str | None = None
    ssh_port: int | None = None


@dataclass
class RemoteResult:
    """One host's outcome. ``exit_code`` is ``None`` when the command never ran (connection
    failed, timed out): then ``error`` says why. Durations are in seconds; ``started`` is the
    Unix time the command was sent and ``connect_s`` the part of ``duration_s`` spent opening a
    new connection (0 where the transport does not measure them)."""

    host: str
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    duration_s: float = 0.0
    started: float = 0.0
    connect_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error

    def reason(self) -> str:
        """A one-line description of a failure: the connection error, or the exit code and the
        last lines of stderr (remote output)."""
        if self.error:
            return self.error
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-5:]
        return f"exit code {self.exit_code}" + (": " + " | ".join(tail) if tail else "")


class Transport(Protocol):
    """Run commands on hosts. Implementations: :class:`~glmlaunch.transport.ssh.SSHTransport`,
    :class:`~glmlaunch.transport.local.LocalTransport`, :class:`~glmlaunch.transport.srun.SrunTransport`."""

    kind: str

    def run_many(
        self,
        commands: dict[Target, str],
        *,
        timeout: float = 60.0,
        on_done: Callable[[Target, RemoteResult], None] | None = None,
        stdin: str | None = None,
    ) -> dict[Target, RemoteResult]:
        """Run ``commands[target]`` (a bash command line) on every target at once; wait at most
        ``timeout`` seconds for each. ``stdin``: text given to every command on its standard input
        (how a secret travels: never in argv, never logged). Returns one result per target; never
        raises for a host."""
        ...

    def put_text(
        self, targets: list[Target], path: str, text: str, *, mode: int = 0o600, timeout: float = 30.0
    ) -> dict[Target, RemoteResult]:
        """Write ``text`` to the new file ``path`` on every target, as ``nodeops write_secret``
        does: the parent directory is created with mode 700 (an existing one must be a private
        directory of this user, not a symlink), the file with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and
        ``mode`` (an existing file or symlink is refused). The text travels on stdin. Not logged."""
        ...

    def close(self) -> None: ...


def run_parallel(
    run_one: Callable[[Target, str, float], RemoteResult],
    commands: dict[Target, str],
    *,
    timeout: float,
    on_done: Callable[[Target, RemoteResult], None] | None = None,
    max_parallel: int = 64,
    slack_s: float | None = None,
    abandon: Callable[[Target], None] | None = None,
) -> dict[Target, RemoteResult]:
    """The body of every transport's ``run_many``: ``run_one(target, command, timeout)`` on a
    thread per target (at most ``max_parallel`` at once); one result per target, in order.

    ``slack_s``: a hard bound on each target, ``timeout + slack_s`` seconds from the moment its
    ``run_one`` starts, whatever the transport's library does inside (paramiko waits without a
    timeout for the answer to an exec request on an open connection, paramiko/channel.py
    ``_wait_for_event`` (paramiko@5.1.0)). A target past it gets a result with ``exit_code=None``
    and an ``error`` naming the host as unreachable; ``abandon(target)`` is called so that the
    transport drops (and closes) that host's connection; its thread (a daemon) is left to end on
    its own and its late result is discarded. ``None``: no such bound (the transport's own
    timeouts are trusted, e.g. a local subprocess)."""
    out: dict[Target, RemoteResult] = {}
    if not commands:
        return out
    gate = threading.Semaphore(max(1, max_parallel))
    results: dict[Target, RemoteResult] = {}
    started: dict[Target, float] = {}
    cv = threading.Condition()

    def work(t: Target, cmd: str) -> None:
        with gate:
            with cv:
                started[t] = time.monotonic()
            try:
                r = run_one(t, cmd, timeout)
            except Exception as e:  # a transport bug must not lose the host: report it
                r = RemoteResult(t.name, None, error=f"{t.name}: {e.__class__.__name__}: {e}")
            with cv:
                results.setdefault(t, r)
                cv.notify_all()

    for t, cmd in commands.items():
        threading.Thread(target=work, args=(t, cmd), daemon=True, name=f"glmlaunch-{t.name}").start()
    for t in commands:
        with cv:
            while t not in results:
                t0 = started.get(t)
                if slack_s is not None and t0 is not None:
                    left = t0 + timeout + slack_s - time.monotonic()
                    if left <= 0:
                        results[t] = RemoteResult(
                            t.name,
                            None,
                            error=f"{t.name}: no answer within {timeout + slack_s:.0f} s: unreachable "
                            "(the connection was dropped)",
                            duration_s=time.monotonic() - t0,
                        )
                        if abandon is not None:
                            threading.Thread(target=abandon, args=(t,), daemon=True).start()
                        break
                    cv.wait(min(left, 1.0))
                else:
                    cv.wait(1.0)
            r = results[t]
        out[t] = r
        if on_done:
            on_done(t, r)
    return out


def put_text_command(path: str, mode: int, python: str = "python3") -> str:
    """The node command of ``put_text``: ``nodeops write_secret`` (the text on its stdin)."""
    import inspect
    import json
    import posixpath
    import shlex

    from .. import nodeops

    args = {"path": path, "mode": mode, "dirs": [[posixpath.dirname(path) or ".", True]]}
    src = inspect.getsource(nodeops)
    return f"{shlex.quote(python)} -c {shlex.quote(src)} write_secret {shlex.quote(json.dumps(args))}"
