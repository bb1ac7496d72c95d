"""Every default timeout, port and grace period in one place, and the SSH options.

Layers take their defaults from :class:`Defaults` instead of restating numbers, so that the
runtime env's job-stop grace, the wait in :func:`glmlaunch.jobs.stop_job` and the CLI's option
defaults cannot disagree. Times are seconds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


class Defaults:
    """The defaults (seconds unless named otherwise)."""

    port_base = 6379  # Ray's GCS; Ray's pinned ports are port_base .. port_base+9
    dashboard_port = 8265  # dashboard and job API
    connect_timeout_s = 10.0  # one SSH connection (TCP, banner, auth)
    command_timeout_s = 120.0  # one node operation (preflight, start, stop ...)
    join_timeout_s = 300.0  # until every node and GPU has joined
    node_stop_grace_s = 20.0  # SIGTERM to a node's Ray session, then SIGKILL of that session
    job_stop_grace_s = 120  # Ray's RAY_JOB_STOP_WAIT_TIME_S: SIGTERM to the trainer, then SIGKILL
    job_stop_wait_s = 150.0  # how long stop_job waits for the job to be terminal (> job_stop_grace_s)
    watchdog_s = 10.0  # how often a followed job's nodes are checked
    restart_backoff_s = 30.0  # supervision: the wait before the first restart, doubled each time
    restart_backoff_max_s = 600.0  # ... up to this
    job_api_request_s = 30.0  # one HTTP request to the head's job API (connect, and each read)
    job_api_unreachable_s = 30.0  # the job API may not answer this long before the head counts as gone
    convert_timeout_s = (
        4 * 3600.0
    )  # the HF -> torch_dist conversion on every training node (glmlaunch prepare)
    copy_timeout_s = 4 * 3600.0  # the node-local copies of the checkpoints (glmlaunch prepare)


def check_seconds(option: str, value: object, example: str, *, optional: bool = False) -> None:
    """Refuse a duration that is not a finite number of seconds above 0 (``None`` passes when
    ``optional``). Raises :class:`~glmlaunch.errors.UsageError` naming ``option``."""
    from .errors import UsageError

    if value is None and optional:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise UsageError(
            f"{option} {value}: must be a number of seconds more than 0", f"e.g. {option} {example}"
        )


@dataclass
class SSHOptions:
    """How to reach the nodes over SSH; unset fields come from ``~/.ssh/config`` (or
    ``ssh_config``). ``connect_timeout`` in seconds."""

    ssh_config: str | None = None
    user: str | None = None
    key: str | None = None
    port: int | None = None
    known_hosts: str | None = None
    connect_timeout: float = Defaults.connect_timeout_s

    def validate(self) -> None:
        """Refuse values that cannot be right before any node is contacted: file options empty or
        with control characters, a user that is not a login name (``ssh -l`` would read one
        starting with ``-`` as an option), a port outside 1-65535. Raises
        :class:`~glmlaunch.errors.UsageError` naming the option."""
        from .errors import UsageError
        from .hosts import is_user, plain_option, shown

        for option, value in (
            ("--ssh-config", self.ssh_config),
            ("--ssh-key", self.key),
            ("--known-hosts", self.known_hosts),
        ):
            plain_option(option, value, f"pass {option} PATH of a readable file")
            if value is not None and not os.path.isfile(os.path.expanduser(value)):
                raise UsageError(
                    f"{option} {shown(value)}: no such file",
                    f"pass {option} PATH of an existing, readable file",
                )
        check_seconds("--connect-timeout", self.connect_timeout, "10")
        if self.user is not None and not is_user(self.user):
            raise UsageError(
                f"--ssh-user '{shown(self.user)}': not a login name (letters, digits, '.', '_' and '-', not starting with '-')",
                "pass a plain login name, or leave it out (~/.ssh/config decides)",
            )
        if self.port is not None and not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise UsageError(
                f"--ssh-port {self.port!r}: not a TCP port", "pass a port from 1 to 65535, e.g. 22"
            )
