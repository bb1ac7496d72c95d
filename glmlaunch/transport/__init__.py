"""Transports: run shell commands on many hosts in parallel, with timeouts and per-host results.

A transport knows how to reach a node (SSH through Fabric, ``srun`` inside a Slurm job, or a
local subprocess); it knows nothing about Ray. :class:`RemoteResult` is one host's outcome;
``run_many`` never raises for a host failure, it returns it, so that callers can name every host
that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
) -> dict[Target, RemoteResult]:
    """The body of every transport's ``run_many``: ``run_one(target, command, timeout)`` on a
    thread per target (at most ``max_parallel`` at once); one result per target, in order."""
    out: dict[Target, RemoteResult] = {}
    if not commands:
        return out
    with ThreadPoolExecutor(max_workers=min(max_parallel, len(commands))) as ex:
        futs = {ex.submit(run_one, t, cmd, timeout): t for t, cmd in commands.items()}
        for f, t in futs.items():
            r = f.result()
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
