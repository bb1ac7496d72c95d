"""SSH transport through Fabric: every host in parallel, explicit connect and command timeouts,
host keys checked.

Settings come from ``~/.ssh/config`` (or ``ssh_config`` given here: HostName, User, Port,
IdentityFile, ProxyJump ...) and are overridden by ``user``/``key``/``port`` and by per-host
``ssh_user``/``ssh_port`` from the hostfile. Host keys are checked against the ssh_config's
``UserKnownHostsFile``, ``~/.ssh/known_hosts`` and ``known_hosts`` (Fabric itself accepts any
key, fabric/connection.py:458 (fabric@3.2.3); we set paramiko's ``RejectPolicy`` unless
``StrictHostKeyChecking no``).
A failure names the host, the step and the remote stderr.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import TransportError, UsageError
from ..options import Defaults
from . import RemoteResult, Target, put_text_command, run_parallel

log = logging.getLogger(__name__)


class SSHTransport:
    """Run commands over SSH with Fabric. ``connect_timeout`` (seconds) bounds the TCP connect,
    the SSH banner/auth and the opening of a channel on a cached connection; each command's
    ``timeout`` bounds its run time; :meth:`slack_s` beyond that is a hard bound whatever paramiko
    does. A host past a bound is reported unreachable (``RemoteResult.error`` names it) and its
    connection is dropped from the cache, so the next call connects afresh."""

    kind = "ssh"

    def __init__(
        self,
        *,
        ssh_config: str | None = None,
        user: str | None = None,
        key: str | None = None,
        port: int | None = None,
        known_hosts: str | None = None,
        connect_timeout: float = Defaults.connect_timeout_s,
        max_parallel: int = 64,
    ):
        if connect_timeout <= 0:
            raise UsageError(
                f"--connect-timeout {connect_timeout}: must be more than 0 seconds",
                hint="e.g. --connect-timeout 10",
            )
        for flag, path in (("--ssh-key", key), ("--known-hosts", known_hosts)):
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise UsageError(f"{flag} {path}: file not found", hint=f"pass an existing file to {flag}")
        if port is not None and not 1 <= port <= 65535:
            raise UsageError(f"--ssh-port {port}: not a port", hint="e.g. --ssh-port 22")
        try:
            from fabric import Config
        except ImportError:
            raise TransportError(
                "SSH needs Fabric, which is not installed", hint="pip install 'glmlaunch[ssh]'"
            ) from None
        try:
            if ssh_config:
                if not os.path.exists(ssh_config):
                    raise UsageError(
                        f"--ssh-config {ssh_config}: file not found", hint="pass an existing ssh_config file"
                    )
                self._config = Config(runtime_ssh_path=ssh_config)
            else:
                self._config = Config()
        except UsageError:
            raise
        except Exception as e:  # paramiko chokes on Match/Include (paramiko#2522, #1609)
            raise UsageError(
                f"cannot read the SSH configuration ({ssh_config or '~/.ssh/config'}): {e}",
                hint="pass --ssh-config FILE with a config paramiko can read (no Match/Include lines)",
            ) from None
        self.ssh_config = ssh_config
        self.user, self.key, self.port = user, key, port
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.max_parallel = max_parallel
        self._conns: dict[Target, Any] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    def _connection(self, t: Target):
        from fabric import Connection
        from paramiko import AutoAddPolicy, RejectPolicy, WarningPolicy

        with self._lock:
            c = self._conns.get(t)
            if c is not None:
                return c
            ck: dict = {
                "banner_timeout": self.connect_timeout,
                "auth_timeout": self.connect_timeout,
                # opening a channel on an open connection: paramiko's default is an hour
                # (paramiko/transport.py:542, channel_timeout = 60 * 60 (paramiko@5.1.0))
                "channel_timeout": self.connect_timeout,
            }
            if self.key:
                ck["key_filename"] = [os.path.expanduser(self.key)]
            c = Connection(
                t.name,
                user=t.ssh_user or self.user,
                port=t.ssh_port or self.port,
                config=self._config,
                connect_timeout=self.connect_timeout,
                connect_kwargs=ck,
            )
            strict = str(c.ssh_config.get("stricthostkeychecking", "yes")).lower()
            files = []
            for f in str(c.ssh_config.get("userknownhostsfile", "")).split():
                files.append(os.path.expanduser(f))
            files += [os.path.expanduser("~/.ssh/known_hosts"), "/etc/ssh/ssh_known_hosts"]
            if self.known_hosts:
                files.insert(0, self.known_hosts)
            for f in files:
                if os.path.isfile(f):
                    try:
                        c.client.load_host_keys(f)
                    except (OSError, Exception) as e:  # a malformed line must not hide the others
                        log.warning("cannot read known_hosts %s: %s", f, e)
            policy = {"no": AutoAddPolicy(), "off": AutoAddPolicy(), "accept-new": WarningPolicy()}.get(
                strict, RejectPolicy()
            )
            c.client.set_missing_host_key_policy(policy)
            self._conns[t] = c
            return c

    def _bound(self, c) -> None:
        """Bound a freshly opened connection's silent failures: an SSH keepalive every
        ``connect_timeout / 2`` s (so an idle connection sends data) and, on a TCP socket,
        ``TCP_USER_TIMEOUT`` of ``2 * connect_timeout``: data unacknowledged that long closes
        the connection (tcp(7)), instead of TCP's retransmissions for about 15 minutes
        (``tcp_retries2``). paramiko's transport thread then ends, which wakes every waiter on
        the connection (paramiko/transport.py ``run``: ``chan._unlink()`` (paramiko@5.1.0))."""
        tr = c.client.get_transport() if c.client is not None else None
        if tr is None or getattr(tr, "_glmlaunch_bounded", False):
            return
        tr.set_keepalive(max(1, int(self.connect_timeout / 2)))
        sock = getattr(tr, "sock", None)
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
                if user_timeout is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, user_timeout, int(2000 * self.connect_timeout))
            except OSError as e:  # not fatal: the hard bound of run_parallel still holds
                log.debug("cannot set TCP timeouts on the connection to %s: %s", c.host, e)
        tr._glmlaunch_bounded = True

    def _drop(self, t: Target, c=None) -> None:
        """Forget ``t``'s cached connection (only ``c`` if given: a newer one stays) and close it;
        closing its transport wakes any thread still waiting on it."""
        with self._lock:
            cur = self._conns.get(t)
            if cur is not None and (c is None or cur is c):
                self._conns.pop(t, None)
            else:
                cur = c
        if cur is not None:
            try:
                cur.close()
            except Exception:
                pass

    @staticmethod
    def _where(t: Target, c) -> str:
        return f"{c.user}@{t.name}" + (f" ({c.host}:{c.port})" if c.host != t.name or c.port != 22 else "")

    def _describe(self, t: Target, c, e: BaseException) -> str:
        """Turn a connection/run exception into a message that says what to do."""
        import paramiko
        from invoke.exceptions import CommandTimedOut

        where = self._where(t, c)
        if isinstance(e, CommandTimedOut):
            return f"{where}: no answer: the command timed out after {e.timeout:.0f} s (connection dropped)"
        if isinstance(e, paramiko.BadHostKeyException):
            return (
                f"{where}: host key does not match known_hosts (possible man-in-the-middle); fix known_hosts"
            )
        if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
            return (
                f"{where}: host key is not in known_hosts; add it (ssh-keyscan -H {c.host} >> ~/.ssh/known_hosts) "
                "or pass --known-hosts FILE"
            )
        if isinstance(e, paramiko.AuthenticationException):
            return (
                f"{where}: authentication failed; check --ssh-user / --ssh-key (key-based login is required)"
            )
        if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
            return f"{where}: connection refused (is sshd running on port {c.port}?)"
        if isinstance(e, TimeoutError | socket.timeout):
            return f"{where}: no answer within the {self.connect_timeout:.0f} s connect timeout"
        if isinstance(e, socket.gaierror):
            return f"{where}: cannot resolve the host name"
        if isinstance(e, OSError):
            return f"{where}: {e.strerror or e}"
        msg = str(e) or e.__class__.__name__
        if "Timeout opening channel" in msg:
            return (
                f"{where}: unreachable: the open connection did not answer within the "
                f"{self.connect_timeout:.0f} s connect timeout (connection dropped)"
            )
        if "SSH session not active" in msg or isinstance(e, EOFError):
            return f"{where}: unreachable: the connection was lost (the host stopped answering)"
        if "Error reading SSH protocol banner" in msg or "No existing session" in msg:
            return f"{where}: no SSH answer within the {self.connect_timeout:.0f} s connect timeout"
        return f"{where}: {msg}"

    # ------------------------------------------------------------------ running

    def _run_one(self, t: Target, command: str, timeout: float, stdin: str | None = None) -> RemoteResult:
        t0, started, connect_s = time.monotonic(), time.time(), 0.0
        c = None
        try:
            c = self._connection(t)
            if not getattr(c, "is_connected", True):  # opened here, not inside run(): timed
                c.open()  # bounded by connect/banner/auth timeouts
                connect_s = time.monotonic() - t0
            self._bound(c)
            r = c.run(
                "bash -c " + shlex.quote(command),
                hide=True,
                warn=True,
                timeout=timeout,
                # invoke closes the remote stdin at the end of the text (no pty)
                in_stream=io.StringIO(stdin) if stdin is not None else False,
                pty=False,
            )
            tr = c.client.get_transport() if c.client is not None else None
            if r.exited == -1 and tr is not None and not tr.is_active():
                # the channel ended without an exit status because the connection died under it
                # (TCP_USER_TIMEOUT, see _bound): the host stopped answering mid-command
                self._drop(t, c)
                return RemoteResult(
                    t.name,
                    None,
                    r.stdout,
                    r.stderr,
                    f"{self._where(t, c)}: unreachable: the connection was lost while the command ran "
                    "(connection dropped)",
                    time.monotonic() - t0,
                    started,
                    connect_s,
                )
            return RemoteResult(
                t.name, r.exited, r.stdout, r.stderr, "", time.monotonic() - t0, started, connect_s
            )
        except Exception as e:  # per-host: never raise, report
            err = self._describe(t, c, e) if c is not None else f"{t.name}: {e}"
            if c is not None:  # a broken connection must not be reused
                self._drop(t, c)
            return RemoteResult(t.name, None, "", "", err, time.monotonic() - t0, started, connect_s)

    def run_many(
        self,
        commands: dict[Target, str],
        *,
        timeout: float = 60.0,
        on_done: Callable[[Target, RemoteResult], None] | None = None,
        stdin: str | None = None,
    ) -> dict[Target, RemoteResult]:
        def one(t: Target, cmd: str, timeout: float) -> RemoteResult:
            return self._run_one(t, cmd, timeout, stdin)

        return run_parallel(
            one,
            commands,
            timeout=timeout,
            on_done=on_done,
            max_parallel=self.max_parallel,
            slack_s=self.slack_s,
            abandon=self._drop,
        )

    @property
    def slack_s(self) -> float:
        """The hard bound of each remote call beyond its command timeout (seconds): TCP connect,
        banner, auth and channel open (``connect_timeout`` each) plus 5 s."""
        return 4 * self.connect_timeout + 5.0

    def put_text(self, targets, path, text, *, mode=0o600, timeout=30.0, python="python3"):
        """``nodeops write_secret`` on each node (``python``), the text on its stdin."""
        cmd = put_text_command(path, mode, python)
        return self.run_many(dict.fromkeys(targets, cmd), timeout=timeout, stdin=text)

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            try:
                c.close()
            except Exception:
                pass
