"""The trainer as a Ray job: submit through Ray's Jobs SDK, follow the logs until the job is
terminal, stop it with a grace period.

- Submit: ``JobSubmissionClient.submit_job`` with the plan's argv (quoted for the entrypoint
  shell), the runtime env (secrets added from the launcher's environment at this moment only)
  and a deterministic ``submission_id``, so a repeated submit of the same run is refused by Ray
  instead of starting the trainer twice.
- Follow: ``tail_job_logs`` can end quietly when its websocket drops (ray#57002, ray#60665); the
  follower reconnects until ``get_job_status`` is terminal and skips what it already printed.
- Stop: ``stop_job`` sends SIGTERM; the driver gets ``RAY_JOB_STOP_WAIT_TIME_S`` (set per plan,
  :attr:`~glmlaunch.options.Defaults.job_stop_grace_s`) to checkpoint before SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from .errors import JobError
from .options import Defaults
from .plan import LaunchPlan

log = logging.getLogger(__name__)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "UNKNOWN"}


@dataclass
class JobResult:
    """How the trainer ended: ``status`` (SUCCEEDED/FAILED/STOPPED), the driver's exit code, Ray's
    message, and the wall time in seconds."""

    submission_id: str
    status: str
    exit_code: int | None
    message: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == "SUCCEEDED"


def client_for(plan: LaunchPlan, token: str | None):
    """A ``JobSubmissionClient`` for the plan's head, authenticated with the run's token (sent as
    an ``Authorization: Bearer`` header, never through argv or the environment)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise JobError("submitting the trainer needs Ray's job SDK", "pip install 'glmlaunch[ray]'") from None
    # the SDK sets its logger to INFO with a handler of its own on import ("WebSocket closed for
    # job ..."): library code never prints, so only its warnings are kept
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    headers = {"Authorization": f"Bearer {token}"} if token else None

    class BoundedJobClient(JobSubmissionClient):
        """The SDK's client with a bound on every HTTP request (connect and each read): the SDK
        passes none to ``requests.request`` (ray/dashboard/modules/dashboard_sdk.py
        ``_do_request`` (ray@2.60.0)), so a head whose link is cut would hold the launcher until
        TCP gives up."""

        def _do_request(self, method, endpoint, *, data=None, json_data=None, **kwargs):
            kwargs.setdefault("timeout", Defaults.job_api_request_s)
            return super()._do_request(method, endpoint, data=data, json_data=json_data, **kwargs)

    try:
        return BoundedJobClient(plan.dashboard_url, headers=headers)
    except Exception as e:
        raise JobError(
            f"cannot reach the Ray job API at {plan.dashboard_url}: {e}",
            "check that the cluster is up (glmlaunch status)",
        ) from None


def job_runtime_env(plan: LaunchPlan, environ: Mapping[str, str] | None = None) -> dict:
    """The runtime env sent with the job: the plan's env vars plus the secrets, read now from the
    launcher's environment. Raises :class:`JobError` naming a secret that is not set."""
    src: Mapping[str, str] = os.environ if environ is None else environ
    env = dict(plan.env_vars)
    for k in plan.secret_env:
        if not src.get(k):
            raise JobError(
                f"the recipe needs the secret {k}, which is not set in this environment",
                f"export {k}=... before launching (it is passed to the job, never to argv or logs)",
            )
        env[k] = src[k]
    return {"env_vars": env}


def submit(
    plan: LaunchPlan,
    token: str | None,
    *,
    client=None,
    environ: dict | None = None,
    submission_id: str | None = None,
) -> str:
    """Submit the plan's trainer (as ``submission_id``, default the plan's); returns the submission
    id. Raises :class:`JobError`."""
    client = client or client_for(plan, token)
    sid = submission_id or plan.submission_id
    try:
        return client.submit_job(
            entrypoint=plan.entrypoint,
            submission_id=sid,
            runtime_env=job_runtime_env(plan, environ),
            entrypoint_num_cpus=0,
            metadata={"glmlaunch_run": plan.run_id, "recipe": plan.recipe},
        )
    except JobError:
        raise
    except Exception as e:
        msg = str(e)
        if "already exists" in msg or ("status code 500" in msg and sid in msg):
            raise JobError(
                f"job {sid} was already submitted to this cluster",
                "follow it with `glmlaunch logs --follow`, or stop it with `glmlaunch down`",
            ) from None
        raise JobError(
            f"submitting the trainer failed: {msg}", "check the head's job API (glmlaunch status)"
        ) from None


def _status(client, sid: str) -> str:
    st = client.get_job_status(sid)
    return getattr(st, "value", str(st))


def job_status(client, sid: str) -> str:
    """The job's status (``PENDING``/``RUNNING``/``SUCCEEDED``/``FAILED``/``STOPPED``), or
    ``UNKNOWN`` when the cluster does not know it (a job of an earlier cluster)."""
    try:
        return _status(client, sid)
    except Exception:
        return "UNKNOWN"


def final_state(client, sid: str) -> tuple[str, int | None, str]:
    """``(status, driver exit code, Ray's message)`` of a job, for the record kept when the cluster
    goes (``UNKNOWN``, ``None``, ``""`` when Ray does not know it)."""
    try:
        info = client.get_job_info(sid)
    except Exception:
        return "UNKNOWN", None, ""
    st = getattr(info, "status", "UNKNOWN")
    return (
        getattr(st, "value", str(st)),
        getattr(info, "driver_exit_code", None),
        (getattr(info, "message", "") or "")[:2000],
    )


def _status_retry(client, sid: str, window_s: float) -> str:
    """:func:`_status`, retried while the job API does not answer (a dashboard busy for a moment)
    for up to ``window_s`` seconds; then the error is raised (requests' errors are ``OSError`` s)."""
    for attempt in Retrying(
        retry=retry_if_exception_type(OSError),
        stop=stop_after_delay(window_s),
        wait=wait_fixed(1.0),
        reraise=True,
    ):
        with attempt:
            return _status(client, sid)
    raise AssertionError("unreachable")  # Retrying either returns or re-raises


def follow(
    client,
    submission_id: str,
    on_text: Callable[[str], None],
    *,
    poll_s: float = 2.0,
    stop: threading.Event | None = None,
    check: Callable[[], None] | None = None,
    timeout_s: float | None = None,
    unreachable_s: float = Defaults.job_api_unreachable_s,
) -> JobResult:
    """Stream the job's log to ``on_text`` until the job is terminal, then return its result.

    Reconnects when the log stream ends early and skips text already delivered. ``check`` is
    called every ``poll_s`` seconds (e.g. a node-liveness watchdog that raises); ``stop`` ends
    following early (the job keeps running). Safe in a notebook: the async tail runs on its own
    thread and event loop. The job API may fail to answer for ``unreachable_s`` seconds in a row
    before the error (an ``OSError``: the head is gone) is raised.
    """
    t0 = time.monotonic()
    delivered = 0
    stop = stop or threading.Event()
    lock = threading.Lock()

    def deliver(full_so_far: str) -> None:
        nonlocal delivered
        with lock:
            if len(full_so_far) > delivered:
                on_text(full_so_far[delivered:])
                delivered = len(full_so_far)

    def tail_thread(done: threading.Event) -> None:
        async def run():
            seen = ""
            async for chunk in client.tail_job_logs(submission_id):
                seen += chunk
                deliver(seen)
                if stop.is_set() or done.is_set():
                    return

        try:
            asyncio.run(run())
        except Exception as e:  # a dropped websocket: the poll loop reconnects
            log.debug("log stream ended: %s", e)
        finally:
            done.set()

    while True:
        done = threading.Event()
        th = threading.Thread(target=tail_thread, args=(done,), daemon=True)
        th.start()
        while not done.is_set():
            if stop.is_set():
                break
            if check:
                check()
            st = _status_retry(client, submission_id, unreachable_s)
            if st in TERMINAL:
                done.wait(5.0)  # let the stream flush the last lines
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise JobError(
                    f"job {submission_id} still running after {timeout_s:.0f} s", "glmlaunch logs --follow"
                )
            done.wait(poll_s)
        st = _status_retry(client, submission_id, unreachable_s)
        if st in TERMINAL or stop.is_set():
            try:  # whatever the stream missed
                deliver(client.get_job_logs(submission_id))
            except Exception as e:
                log.debug("final log fetch failed: %s", e)
            break
        log.info("log stream of %s ended while the job is %s: reconnecting", submission_id, st)
    info = client.get_job_info(submission_id)
    return JobResult(
        submission_id=submission_id,
        status=_status(client, submission_id),
        exit_code=getattr(info, "driver_exit_code", None),
        message=getattr(info, "message", "") or "",
        duration_s=time.monotonic() - t0,
    )


def stop_job(client, submission_id: str, grace_s: float = Defaults.job_stop_wait_s) -> str:
    """Ask the job to stop (SIGTERM, then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S`` =
    :attr:`Defaults.job_stop_grace_s`) and wait up to ``grace_s`` seconds for it to be terminal.
    Returns the final status. Raises :class:`JobError` when the job API refuses the stop."""
    try:
        if _status(client, submission_id) in TERMINAL:
            return _status(client, submission_id)
        client.stop_job(submission_id)
    except Exception as e:
        raise JobError(f"cannot stop job {submission_id}: {e}") from None
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        st = _status(client, submission_id)
        if st in TERMINAL:
            return st
        time.sleep(1.0)
    return _status(client, submission_id)
