"""Local transport: the launching machine itself, through ``bash -c`` subprocesses.

Used for the one-machine default cluster (``glmlaunch launch`` with no hostfile) and for unit
tests of the executor logic. Every target is this machine. Commands get an explicit environment:
the allowed part of the launcher's (:func:`glmlaunch.nodeops.ops_env`), never its secrets.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from .. import nodeops
from . import RemoteResult, Target, run_parallel


class LocalTransport:
    """Run commands on this machine (each target is this machine). ``env``: the commands'
    environment as given (default: :func:`glmlaunch.nodeops.ops_env` of this process's)."""

    kind = "local"

    def __init__(self, env: dict[str, str] | None = None):
        self.env = env

    def _run(self, command: str, timeout: float, stdin: str | None = None) -> RemoteResult:
        t0 = time.monotonic()
        extra: dict = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        try:
            p = subprocess.run(
                ["bash", "-c", command],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env if self.env is not None else nodeops.ops_env(os.environ),
                **extra,
            )
        except subprocess.TimeoutExpired as e:
            return RemoteResult(
                "localhost",
                None,
                _s(e.stdout),
                _s(e.stderr),
                f"timed out after {timeout:.0f} s",
                time.monotonic() - t0,
            )
        return RemoteResult("localhost", p.returncode, p.stdout, p.stderr, "", time.monotonic() - t0)

    def run_many(
        self,
        commands: dict[Target, str],
        *,
        timeout: float = 60.0,
        on_done: Callable[[Target, RemoteResult], None] | None = None,
        stdin: str | None = None,
    ) -> dict[Target, RemoteResult]:
        def one(t: Target, cmd: str, timeout: float) -> RemoteResult:
            r = self._run(cmd, timeout, stdin)
            r.host = t.name
            return r

        return run_parallel(one, commands, timeout=timeout, on_done=on_done)

    def put_text(self, targets, path, text, *, mode=0o600, timeout=30.0):
        out = {}
        for t in targets:  # one machine: the first write creates the file, a second is refused
            t0 = time.monotonic()
            try:
                nodeops.write_secret(path, text, mode, [(os.path.dirname(path) or ".", True)])
                out[t] = RemoteResult(t.name, 0, duration_s=time.monotonic() - t0)
            except nodeops.Refused as e:
                out[t] = RemoteResult(t.name, None, error=f"cannot write {path}: refused: {e}")
            except OSError as e:
                out[t] = RemoteResult(t.name, None, error=f"cannot write {path}: {e.strerror}")
        return out

    def close(self) -> None:
        pass


def _s(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b
