"""Slurm from a notebook or a script, through submitit.

::

    import glmlaunch.slurm
    job = glmlaunch.slurm.submit("glm45-355b-a32b-gspo", nodes=8, gpus_per_node=8,
                                 partition="batch", account="myacct", time="04:00:00", folder="/shared/glm/submitit/%j")
    job.state            # PENDING, RUNNING, ...
    job.result()         # {"status": "SUCCEEDED", "exit_code": 0, "run_dir": ..., "requeues": 0, ...}
    job.cancel()         # scancel: every Ray process the job started is stopped

**In the job** there is one task per node (``--ntasks-per-node=1``). Rank 0 does what
``glmlaunch launch`` does inside an allocation: it reads the nodes from Slurm
(:func:`~glmlaunch.hosts.from_slurm`), checks, starts ``ray start`` on every node as a job step of
its own (:class:`~glmlaunch.transport.srun.SrunTransport`: ``srun --overlap``, one held step per
node), waits until every node and GPU joined, submits the trainer as a Ray job, follows it to its
end and stops exactly what it started. The same plan, readiness wait and scoped teardown as over
SSH. The other ranks wait for rank 0's ``done`` file in the submitit folder, then exit.

The submitit job is made of one *visible* task (``job.result()`` is rank 0's result, a dict):
submitit is told ``nodes=1`` and the node count goes to sbatch through ``additional_parameters``,
so the batch script's ``srun`` still starts one task per node.

**Preemption and time limits**: Slurm sends USR2 ``signal_delay_s`` before the time limit (and on
preemption with ``preempt_send_user_signal``). The Ray steps ignore it; submitit calls
:meth:`LaunchJob.checkpoint` on rank 0, which stops the trainer with its grace period (it saves a
checkpoint on SIGTERM), tears the cluster down, records the requeue in the run directory and lets
submitit requeue the job. The requeued job launches the same recipe: the same run name, so the
same ``--save`` and ``--load`` directory (the run's own checkpoints, not ``--ref-load``): the
trainer resumes. Requeues are bounded by ``max_requeues``.

**Cancel**: ``job.cancel()`` is ``scancel``: Slurm sends SIGTERM to every step; each node's held
step stops its Ray session (SIGTERM, then SIGKILL of that session only) before Slurm's KillWait.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time as _time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GlmlaunchError, UsageError
from .hosts import shown, whole_number
from .options import Defaults
from .progress import Reporter
from .recipe import Recipe, load_recipe
from .runs import RunState

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "local-probe"
# port_base / dashboard_port: see glmlaunch.run.up


def restart_count(environ=None) -> int:
    """How many times Slurm has requeued this job (``SLURM_RESTART_COUNT``, unset or empty: 0).

    Raises :class:`UsageError` when the value is not ASCII digits (``str.isdigit`` would accept
    ``²``): the sbatch docs define it as a count."""
    text = (os.environ if environ is None else environ).get("SLURM_RESTART_COUNT", "") or "0"
    n = whole_number(text)
    if n is None:
        raise UsageError(
            f"SLURM_RESTART_COUNT={shown(text)}: not a whole number",
            "unset SLURM_RESTART_COUNT in the job's environment (Slurm sets it on a requeue)",
        )
    return n


class RequeueLimit(GlmlaunchError):
    """The job asked to be requeued more often than ``max_requeues``."""


def parse_time(time: str | int | float) -> int:
    """A Slurm time limit as minutes (rounded up): ``90`` (minutes), ``"90"``, ``"MM:SS"``,
    ``"HH:MM:SS"``, ``"D-HH"``, ``"D-HH:MM"``, ``"D-HH:MM:SS"``. Raises :class:`GlmlaunchError`."""
    if isinstance(time, bool):
        raise UsageError(f"time={time!r}: not a time limit", 'write time="04:00:00" or time=240 (minutes)')
    if isinstance(time, int | float):
        if time <= 0:
            raise UsageError(f"time={time}: the time limit must be positive", 'write time="04:00:00"')
        return math.ceil(time)
    text = str(time).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise UsageError(
            f"time={time!r}: not a Slurm time limit", 'write "HH:MM:SS", "D-HH:MM:SS" or minutes'
        )
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        secs = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        secs = int(a) * 60 + int(b)
    else:  # MM
        secs = int(a) * 60
    if secs <= 0:
        raise UsageError(f"time={time!r}: the time limit must be positive", 'write time="04:00:00"')
    return math.ceil(secs / 60)


def slurm_parameters(
    *,
    nodes: int,
    gpus_per_node: int,
    timeout_min: int,
    partition: str | None = None,
    account: str | None = None,
    name: str = "glmlaunch",
    cpus_per_task: int | None = None,
    exclusive: bool = False,
    signal_delay_s: int = 300,
    setup: list[str] | None = None,
    slurm_extra: dict | None = None,
) -> dict:
    """The parameters :func:`submit` gives ``submitit.SlurmExecutor.update_parameters``.

    ``nodes`` goes to sbatch through ``additional_parameters`` (submitit itself sees one task, so
    that ``job.result()`` is rank 0's result); ``--ntasks-per-node=1`` makes the batch script's
    srun start one task per node. ``slurm_extra`` adds or overrides sbatch options
    (``{"qos": "high", "constraint": "h200"}``)."""
    extra: dict = {"nodes": nodes}
    if exclusive:
        extra.update(exclusive=True, mem="0")
    extra.update(slurm_extra or {})
    p: dict = {
        "job_name": name,
        "nodes": 1,
        "ntasks_per_node": 1,
        "time": timeout_min,
        "signal_delay_s": signal_delay_s,
        "additional_parameters": extra,
        # one rank dying ends the step (the others would otherwise wait for its done file forever)
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    if gpus_per_node:
        p["gpus_per_node"] = gpus_per_node
    if cpus_per_task:
        p["cpus_per_task"] = cpus_per_task
    if partition:
        p["partition"] = partition
    if account:
        p["account"] = account
    if setup:
        p["setup"] = list(setup)
    return p


def render_sbatch(
    folder: str | os.PathLike, command: str = "python -u -m submitit.core._submit FOLDER", **kw
) -> str:
    """The sbatch script :func:`submit` would write, for the same keyword arguments as
    :func:`slurm_parameters` (a dry run: nothing is submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=command, folder=str(folder), **slurm_parameters(**kw))


def _check_before_submit(
    r: Recipe,
    nodes: int,
    gpus_per_node: int,
    deep: bool,
    port_base: int | None = None,
    dashboard_port: int | None = None,
) -> None:
    """The checks of :func:`glmlaunch.run.plan_launch` on ``nodes`` placeholder nodes: a GPU
    count that disagrees with the recipe, a layout that does not fit, ... are reported before
    anything is queued."""
    from .run import plan_launch

    where = f"slurm.submit(nodes={nodes}, gpus_per_node={gpus_per_node})"
    p = plan_launch(
        r,
        nodes=nodes,
        gpus_per_node=gpus_per_node or None,
        origin=where,
        env={},
        deep=deep,
        port_base=port_base,
        dashboard_port=dashboard_port,
    )
    p.findings.raise_for_errors("nothing was submitted; fix the recipe or the submit() arguments")


def submit(
    recipe: str | Path | dict | Recipe = DEFAULT_RECIPE,
    *,
    nodes: int,
    gpus_per_node: int,
    partition: str | None = None,
    time: str | int = "04:00:00",
    account: str | None = None,
    folder: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    max_requeues: int = 3,
    cluster: str = "slurm",
    slurm_extra: dict | None = None,
    port_base: int | None = None,
    dashboard_port: int | None = None,
    cpus_per_task: int | None = None,
    exclusive: bool = True,
    runs_dir: str | os.PathLike | None = None,
    python: str | None = None,
    join_timeout_s: float = Defaults.join_timeout_s,
    stop_grace_s: float = Defaults.job_stop_wait_s,
    signal_delay_s: int = 300,
    name: str | None = None,
    setup: list[str] | None = None,
    deep: bool = False,
):
    """Submit a launch of ``recipe`` as a Slurm job with submitit; returns the ``submitit.Job``.

    ``nodes`` × ``gpus_per_node``: the allocation (``--nodes``, ``--gpus-per-node``, one task per
    node). ``partition``, ``account``, ``time`` (``"HH:MM:SS"``, ``"D-HH:MM:SS"`` or minutes):
    as for sbatch; ``slurm_extra``: more sbatch options (``{"qos": "high"}``); ``exclusive``:
    whole nodes (``--exclusive --mem=0``: Ray and the trainer use every core of the node).
    ``folder``: submitit's folder (logs, pickles), on a filesystem every node mounts; ``%j`` is
    the job id (default ``<runs_dir>/submitit/%j``). ``runs_dir``: where the run directories go
    (default ``./runs`` or ``$GLMLAUNCH_RUNS_DIR``, made absolute now).

    ``max_requeues``: how many times a preempted or timed-out job is requeued (each requeue
    stops the trainer with ``stop_grace_s`` to checkpoint; USR2 comes ``signal_delay_s`` before
    the limit, so keep ``signal_delay_s`` above ``stop_grace_s``). ``port_base`` /
    ``dashboard_port``: Ray's ports (default 6379 / 8265). ``cluster``: ``"slurm"``; ``"local"``
    runs the job on this machine with submitit's LocalExecutor (tests only).

    ``job.result()`` is a dict: ``status`` (SUCCEEDED/FAILED/STOPPED), ``exit_code``,
    ``submission_id``, ``run_dir``, ``requeues``, ``attempt``, ``probe`` (the probe's report),
    ``message``. Raises, before anything is submitted: :class:`~glmlaunch.errors.RecipeError`,
    :class:`~glmlaunch.errors.CheckFailed` (e.g. ``gpus_per_node`` disagrees with the recipe),
    :class:`GlmlaunchError` (bad arguments, no Slurm on this machine).
    """
    try:
        import submitit
    except ImportError:
        raise GlmlaunchError(
            "glmlaunch.slurm.submit needs submitit, which is not installed", "pip install 'glmlaunch[slurm]'"
        ) from None

    r = load_recipe(recipe, overrides)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise UsageError(f"nodes={nodes!r}: need a whole number of nodes, at least 1", "pass nodes=8")
    if not isinstance(gpus_per_node, int) or isinstance(gpus_per_node, bool) or gpus_per_node < 0:
        raise UsageError(
            f"gpus_per_node={gpus_per_node!r}: need a whole number of GPUs (0 or more)",
            "pass gpus_per_node=8",
        )
    if not isinstance(max_requeues, int) or max_requeues < 0:
        raise UsageError(f"max_requeues={max_requeues!r}: need 0 or more", "pass max_requeues=3")
    if cluster not in ("slurm", "local"):
        raise UsageError(f"cluster={cluster!r}: unknown", 'use cluster="slurm" ("local" is for tests)')
    timeout_min = parse_time(time)
    if signal_delay_s >= timeout_min * 60:
        raise UsageError(
            f"signal_delay_s={signal_delay_s} is not shorter than the time limit ({timeout_min} min)",
            "lower signal_delay_s or raise time",
        )
    if cluster == "local" and nodes != 1:
        raise UsageError(f'cluster="local" runs on this machine alone, but nodes={nodes}', "pass nodes=1")
    if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise GlmlaunchError(
            "sbatch/srun not found: this machine is not a Slurm login node",
            "run on a machine with the Slurm client (sbatch, srun, scontrol) on PATH",
        )
    _check_before_submit(r, nodes, gpus_per_node, deep, port_base, dashboard_port)

    from .runs import default_runs_dir

    runs = Path(runs_dir).absolute() if runs_dir else default_runs_dir()
    folder = Path(folder).absolute() if folder else runs / "submitit" / "%j"
    entry = LaunchJob(
        r,
        gpus_per_node=gpus_per_node or None,
        runs_dir=str(runs),
        port_base=port_base,
        dashboard_port=dashboard_port,
        python=python,
        join_timeout_s=join_timeout_s,
        stop_grace_s=stop_grace_s,
        max_requeues=max_requeues,
    )
    job_name = name or f"glmlaunch-{r.run.name}"
    ex: submitit.Executor
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=max_requeues)
        ex.update_parameters(
            timeout_min=timeout_min,
            tasks_per_node=1,
            signal_delay_s=signal_delay_s,
            **({"setup": list(setup)} if setup else {}),
        )
    else:
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
        ex.update_parameters(
            **slurm_parameters(
                nodes=nodes,
                gpus_per_node=gpus_per_node,
                timeout_min=timeout_min,
                partition=partition,
                account=account,
                name=job_name,
                cpus_per_task=cpus_per_task,
                exclusive=exclusive,
                signal_delay_s=signal_delay_s,
                setup=setup,
                slurm_extra=slurm_extra,
            )
        )
    try:
        return ex.submit(entry)
    except Exception as err:  # sbatch refused (no Slurm configuration, bad partition, ...)
        raise GlmlaunchError(
            f"sbatch refused the job: {str(err).strip()[:500]}",
            "check the Slurm options (partition, account, time) and that sbatch works here",
        ) from None


def record(job) -> dict:
    """What the job wrote about itself so far (``<folder>/<job>_glmlaunch.json``): ``run_dirs``
    (one per attempt, the last is the current one), ``requeues``, ``state``, ``result``; ``{}``
    before the job started."""
    p = Path(job.paths.folder) / f"{job.job_id}_glmlaunch.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- in the job


def _say(text: str) -> None:
    print(f"[glmlaunch {_time.strftime('%H:%M:%S')}] {text}", flush=True)


class _PrintReporter(Reporter):
    """Progress as plain lines on the task's stdout (submitit's ``<job>_0_log.out``)."""

    def step(self, name, total=None):
        _say(f"> {name}")

    def findings(self, title, findings):
        for f in findings:
            _say(f"  {f.severity} {f}")

    def host(self, step, host, state, detail=""):
        _say(f"  {host}: {state} {detail}".rstrip())

    def done(self, name, ok=True, detail=""):
        _say(f"{'ok' if ok else 'FAILED'}: {name} {detail}".rstrip())

    def log_line(self, text):
        sys.stdout.write(text)
        sys.stdout.flush()


class LaunchJob:
    """The callable a submitted job runs (one task per node; see the module's docstring).

    Checkpointable (submitit calls :meth:`checkpoint` on rank 0 at preemption or time-out): the
    state that survives a requeue is the recipe, the options and ``requeues``."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        gpus_per_node: int | None = None,
        runs_dir: str | None = None,
        port_base: int | None = None,
        dashboard_port: int | None = None,
        python: str | None = None,
        join_timeout_s: float = Defaults.join_timeout_s,
        stop_grace_s: float = Defaults.job_stop_wait_s,
        max_requeues: int = 3,
    ):
        self.recipe = recipe
        self.gpus_per_node = gpus_per_node
        self.runs_dir = runs_dir
        self.port_base = port_base
        self.dashboard_port = dashboard_port
        self.python = python
        self.join_timeout_s = join_timeout_s
        self.stop_grace_s = stop_grace_s
        self.max_requeues = max_requeues
        self.requeues = 0
        self.run_dirs: list[str] = []
        self._cluster: Run | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cluster"] = None  # a live handle (threads, processes) is never pickled
        return state

    # ------------------------------------------------------------------ files in the submitit folder

    @staticmethod
    def _marker(env, what: str) -> Path:
        attempt = restart_count()
        return Path(env.paths.folder) / f"{env.job_id}_glmlaunch.{attempt}.{what}"

    def _record(self, **kw) -> None:
        """The job-level record ``<job>_glmlaunch.json`` (attempts, requeues, run directories)."""
        import submitit

        env = submitit.JobEnvironment()
        p = Path(env.paths.folder) / f"{env.job_id}_glmlaunch.json"
        data = json.loads(p.read_text()) if p.exists() else {}
        data.update(kw)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.replace(p)

    # ------------------------------------------------------------------ run

    def __call__(self) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        done = self._marker(env, "done")
        if env.global_rank != 0:
            return self._wait(env, done)
        try:
            return self._run(env)
        finally:
            done.write_text(str(_time.time()))

    def _wait(self, env, done: Path) -> dict:
        """Ranks > 0: Ray runs in steps of its own on this node; wait for rank 0 to finish."""
        t0 = _time.monotonic()
        while not done.exists():
            _time.sleep(1.0)
        return {
            "rank": env.global_rank,
            "host": socket.gethostname(),
            "waited_s": round(_time.monotonic() - t0, 1),
        }

    def _run(self, env) -> dict:
        from . import run as runs
        from .probe import parse_report

        attempt = restart_count()
        if attempt > self.max_requeues:
            raise RequeueLimit(
                f"Slurm started job {env.job_id} {attempt + 1} times, more than max_requeues={self.max_requeues} allows",
                "submit again: training resumes from the run's latest checkpoint",
            )
        reporter = _PrintReporter()
        _say(
            f"job {env.job_id} attempt {attempt} (requeues so far: {self.requeues}); nodes {', '.join(env.hostnames)}"
        )
        local = env.cluster != "slurm"
        run = runs.up(
            self.recipe,
            None,
            local=local,
            gpus_per_node=self.gpus_per_node,
            runs_dir=self.runs_dir,
            reporter=reporter,
            join_timeout_s=self.join_timeout_s,
            port_base=self.port_base,
            dashboard_port=self.dashboard_port,
            python=self.python,
            reuse=False,
        )
        self._cluster = run
        rd = run.run_dir
        assert rd is not None  # up() made the run directory
        self.run_dirs.append(str(rd.path))
        slurm_info = {
            "job_id": env.job_id,
            "attempt": attempt,
            "requeues": self.requeues,
            "max_requeues": self.max_requeues,
            "previous_run_dirs": self.run_dirs[:-1],
            "folder": str(env.paths.folder),
        }
        rd.update(slurm=slurm_info)
        self._record(
            job_id=env.job_id,
            requeues=self.requeues,
            max_requeues=self.max_requeues,
            run_dirs=self.run_dirs,
            state="running",
        )
        try:
            result = run.submit(follow=True)
            probe = None
            if run.plan.trainer_kind == "probe" and (rd.path / "job.log").exists():
                probe = parse_report((rd.path / "job.log").read_text())
        finally:
            if self._cluster is not None:  # else checkpoint() already tore it down
                self._cluster = None
                run.down()
        assert result is not None  # followed to its end
        out = {
            "ok": result.ok,
            "status": result.status,
            "exit_code": result.exit_code,
            "message": result.message[:2000],
            "submission_id": result.submission_id,
            "run_dir": str(rd.path),
            "requeues": self.requeues,
            "attempt": attempt,
            "job_id": env.job_id,
            "nodes": [n.name for n in run.plan.nodes],
            "seconds": round(result.duration_s, 1),
            "probe": probe,
        }
        rd.update(slurm=slurm_info | {"result": {k: out[k] for k in ("status", "exit_code")}})
        self._record(state="finished", result={k: out[k] for k in ("status", "exit_code", "run_dir")})
        _say(f"trainer {result.status} (exit code {result.exit_code}); run directory {rd.path}")
        return out

    # ------------------------------------------------------------------ preemption / time-out

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on rank 0 (USR2): stop the trainer with its grace period (it saves a
        checkpoint), tear the cluster down, record the requeue, and requeue (at most
        ``max_requeues`` times; then :class:`RequeueLimit` ends the job)."""
        import submitit

        from . import jobs

        n = self.requeues + 1
        _say(
            f"checkpoint: Slurm asked this job to stop (preemption or time limit); requeue {n} of at most {self.max_requeues}"
        )
        c = self._cluster
        state = None
        if c is not None:
            rd = c.run_dir
            sid = (rd.manifest.submission_id if rd else None) or c.plan.submission_id
            try:
                client = jobs.client_for(c.plan, c.token)
                _say(f"stopping trainer {sid} (up to {self.stop_grace_s:.0f} s for its checkpoint)")
                state = jobs.stop_job(client, sid, grace_s=self.stop_grace_s)
            except Exception as e:  # the cluster may already be going (preemption SIGTERMs every step)
                _say(f"could not stop the trainer through Ray: {e}")
            if rd:
                rd.event("requeue", requeue=n, trainer=state, allowed=n <= self.max_requeues)
                rd.update(
                    state=RunState.REQUEUED if n <= self.max_requeues else RunState.REQUEUE_LIMIT,
                    slurm=(rd.manifest.slurm or {}) | {"requeues": n, "requeued": n <= self.max_requeues},
                )
            try:
                c.down()
            except Exception as e:
                _say(f"teardown before the requeue was incomplete: {e}")
            self._cluster = None
        self._record(
            requeues=n if n <= self.max_requeues else self.requeues,
            state="requeued" if n <= self.max_requeues else "requeue-limit",
        )
        if n > self.max_requeues:
            raise RequeueLimit(
                f"not requeued: the job was already requeued {self.requeues} times (max_requeues={self.max_requeues})",
                "submit again (training resumes from the run's latest checkpoint) or raise max_requeues",
            )
        self.requeues = n
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


__all__ = ["LaunchJob", "RequeueLimit", "parse_time", "record", "render_sbatch", "slurm_parameters", "submit"]
