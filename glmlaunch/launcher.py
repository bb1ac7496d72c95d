"""The three ways in, as functions: :func:`up` (start a cluster and return its handle),
:func:`launch` (checks, up, submit, follow, down) and :func:`open_run` (the handle of a run
started earlier, for ``status``/``logs``/``down`` from any shell).

Safe in a notebook: nothing here prints or exits; errors are exceptions, progress goes to a
:class:`~glmlaunch.progress.Reporter`, and Ctrl-C stops the job (with its grace period) and the
cluster before it propagates.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import jobs
from .cluster import RayCluster
from .errors import CheckFailed, ClusterError, GlmlaunchError, HostfileError, JobError
from .hosts import Allocation, discover
from .plan import LaunchPlan, PortPlan, build_plan
from .progress import NullReporter, Reporter
from .recipe import Recipe, load_recipe
from .render import plan_to_dict, render_bash, render_json
from .runs import RunDir
from .transport import Transport

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "local-probe"


@dataclass
class SSHOptions:
    """How to reach the nodes over SSH; unset fields come from ``~/.ssh/config`` (or
    ``ssh_config``). ``connect_timeout`` in seconds."""

    ssh_config: str | None = None
    user: str | None = None
    key: str | None = None
    port: int | None = None
    known_hosts: str | None = None
    connect_timeout: float = 10.0


@dataclass
class LaunchResult:
    """What :func:`launch` returns: the plan, the run directory, the job's result and, for the
    probe, its parsed report."""

    plan: LaunchPlan
    run_dir: Path | None
    job: jobs.JobResult | None = None
    probe: dict | None = None
    findings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.job is not None and self.job.ok


def make_transport(alloc: Allocation, ssh: SSHOptions | None = None, kind: str = "auto") -> Transport:
    """``local`` for this machine alone, ``srun`` inside a Slurm allocation, else SSH (Fabric)."""
    if kind == "auto":
        kind = "local" if alloc.origin == "local" else ("srun" if alloc.origin.startswith("slurm:") else "ssh")
    if kind == "local":
        from .transport.local import LocalTransport

        return LocalTransport()
    if kind == "srun":
        from .transport.srun import SrunTransport

        return SrunTransport(job_id=alloc.extra.get("job_id"))
    from .transport.ssh import SSHTransport

    s = ssh or SSHOptions()
    return SSHTransport(ssh_config=s.ssh_config, user=s.user, key=s.key, port=s.port, known_hosts=s.known_hosts,
                        connect_timeout=s.connect_timeout)


def transport_from_manifest(m: dict) -> Transport:
    t = m.get("transport", {})
    kind = t.get("kind", "ssh")
    if kind == "local":
        from .transport.local import LocalTransport

        return LocalTransport()
    if kind == "srun":
        from .transport.srun import SrunTransport

        return SrunTransport(job_id=t.get("job_id"))
    from .transport.ssh import SSHTransport

    return SSHTransport(ssh_config=t.get("ssh_config"), user=t.get("user"), key=t.get("key"), port=t.get("port"),
                        known_hosts=t.get("known_hosts"), connect_timeout=t.get("connect_timeout", 10.0))


def prepare(
    recipe: str | Path | dict | Recipe = DEFAULT_RECIPE,
    hostfile: str | None = None,
    *,
    overrides: list[str] | None = None,
    local: bool = False,
    head: str | None = None,
    gpus_per_node: int | None = None,
    port_base: int | None = None,
    dashboard_port: int | None = None,
    python: str | None = None,
    run_id: str | None = None,
    deep: bool = False,
    env: dict | None = None,
    network: str | None = None,
    interface: str | None = None,
    ssh: SSHOptions | None = None,
    transport: Transport | None = None,
) -> tuple[Recipe, Allocation, LaunchPlan]:
    """Load the recipe, find the nodes, build the plan and run the checks. Touches no node,
    except to read each node's addresses when ``network`` (CIDR) or ``interface`` picks them
    (:func:`glmlaunch.network.select_addresses`). Raises :class:`CheckFailed` with every finding
    when any check fails."""
    if local and hostfile:
        raise HostfileError("--local and --hostfile exclude each other", "pass one of them")
    if local and head:
        raise HostfileError("--head has no meaning with --local (this machine is the head)", "drop --head")
    r = load_recipe(recipe, overrides)
    if interface and not r.env.interface:
        r.env.interface = interface  # GLOO/TP/NCCL_SOCKET_IFNAME follow the chosen interface
    environ = dict(os.environ if env is None else env)
    if hostfile is None and not local and not environ.get("SLURM_JOB_NODELIST"):
        from .hosts import DEFAULT_HOSTFILE

        if not os.path.exists(DEFAULT_HOSTFILE):
            if r.trainer.kind == "probe" or (r.cluster.nodes or 1) == 1:
                local = True
            else:
                raise HostfileError(
                    f"{DEFAULT_HOSTFILE}: hostfile not found, and this is not a Slurm allocation",
                    "pass --hostfile PATH, run inside salloc/sbatch, or use --local for a one-machine run",
                )
    alloc = discover(hostfile, gpus_per_node=gpus_per_node, head=head, local=local, env=environ)
    if network or interface:
        from .network import select_addresses

        alloc = select_addresses(alloc, transport or make_transport(alloc, ssh), python=python or sys.executable,
                                 network=network, interface=interface, setup=[r.expand(x) for x in r.cluster.setup])
    ports = PortPlan(base=PortPlan.base if port_base is None else port_base,
                     dashboard=PortPlan.dashboard if dashboard_port is None else dashboard_port)
    plan = build_plan(r, alloc, run_id=run_id, ports=ports, python=python)
    findings = list(plan.findings)
    if deep and not plan.errors:
        from .deepcheck import deep_check, merge_findings

        findings = merge_findings(findings, deep_check(r, plan))
        plan.findings = findings
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        only_ports = all(f.field.startswith("ports") for f in errors)
        raise CheckFailed(findings, hint="move Ray's ports with --port-base / --dashboard-port" if only_ports else None)
    return r, alloc, plan


def node_preflight(recipe: Recipe, alloc: Allocation, plan: LaunchPlan, *, ssh: SSHOptions | None = None,
                   transport: Transport | None = None, reporter: Reporter | None = None) -> list:
    """Run only the per-node preflight round (read-only: nothing is started) and return its
    findings; unreachable nodes become error findings naming the host."""
    from .errors import Finding, TransportError

    c = RayCluster(plan, transport or make_transport(alloc, ssh), recipe=recipe, reporter=reporter)
    try:
        return c.preflight()
    except CheckFailed as e:
        return e.findings
    except TransportError as e:
        return [Finding(h, why, "node reachable", "glmlaunch preflight") for h, why in e.failures.items()] or [
            Finding("nodes", e.message, "node reachable", "glmlaunch preflight")]
    finally:
        c.transport.close()


def _current_cluster(alloc: Allocation, recipe: Recipe, plan: LaunchPlan, reporter: Reporter) -> RayCluster | None:
    """The current run's cluster if it is up on the same hosts, for the same recipe, with the same
    ports, Python and GPUs per node (``up`` is idempotent); else ``None``. The returned handle
    carries the new plan's trainer argv and runtime env (overrides apply to the next job)."""
    try:
        rd = RunDir.open()
    except GlmlaunchError:
        return None
    m = rd.manifest
    # a job submitted to the cluster (running, or finished with the cluster kept) leaves it up
    if m.get("state") not in ("up", "running", "finished") or m.get("recipe") != recipe.run.name:
        return None
    if [h["address"] for h in m.get("hosts", [])] != [h.address for h in alloc.hosts]:
        return None
    if m.get("ports") != plan.ports.named():
        return None
    try:
        c = RayCluster.from_run(rd, transport_from_manifest(m), reporter=reporter)
        if c.plan.python != plan.python or c.plan.gpus_per_node != plan.gpus_per_node:
            return None
        st = c.status()
    except GlmlaunchError:
        return None
    if not st.ok:
        return None
    differs = [k for k, a, b in (("trainer argv", c.plan.argv, plan.argv), ("runtime env", c.plan.env_vars, plan.env_vars),
                                 ("secrets", c.plan.secret_env, plan.secret_env)) if a != b]
    if differs:
        raise ClusterError(
            f"run {c.plan.run_id} is already up on these nodes with another plan ({', '.join(differs)} differ)",
            hint="`glmlaunch down` first to start with the new settings, or move this cluster with --port-base",
        )
    return c


def up(
    recipe: str | Path | dict | Recipe = DEFAULT_RECIPE,
    hostfile: str | None = None,
    *,
    overrides: list[str] | None = None,
    local: bool = False,
    head: str | None = None,
    gpus_per_node: int | None = None,
    ssh: SSHOptions | None = None,
    transport: Transport | None = None,
    runs_dir: str | None = None,
    reporter: Reporter | None = None,
    join_timeout_s: float = 300.0,
    port_base: int | None = None,
    dashboard_port: int | None = None,
    python: str | None = None,
    deep: bool = False,
    reuse: bool = True,
    env: dict | None = None,
    network: str | None = None,
    interface: str | None = None,
) -> RayCluster:
    """Check, then start a Ray cluster for ``recipe`` on the nodes and return it once every node
    and GPU has joined. With ``reuse``, an identical cluster already up from the current run is
    returned instead of starting a second one. Raises :class:`CheckFailed` (nothing started),
    :class:`ClusterError` / :class:`TransportError` (rolled back: nothing left running)."""
    reporter = reporter or NullReporter()
    r, alloc, plan = prepare(recipe, hostfile, overrides=overrides, local=local, head=head,
                             gpus_per_node=gpus_per_node, port_base=port_base, dashboard_port=dashboard_port,
                             python=python, deep=deep, env=env, network=network, interface=interface, ssh=ssh,
                             transport=transport)
    if reuse:
        existing = _current_cluster(alloc, r, plan, reporter)
        if existing is not None:
            reporter.done("cluster already up", True, str(existing.run_dir.path if existing.run_dir else ""))
            existing.reused = True
            return existing
    t = transport or make_transport(alloc, ssh)
    rd = RunDir.create(plan.run_id, runs_dir, current=False)  # current once it is up: a failed
    # start must not hide the run that is still up
    rd.write("plan.json", render_json(plan))
    rd.write("commands.sh", render_bash(plan))
    s = ssh or SSHOptions()
    rd.update(
        recipe=r.run.name, recipe_source=r.source, state="created", submission_id=plan.submission_id,
        hosts=[{"name": h.name, "address": h.address, "gpus": plan.gpus_per_node} for h in alloc.hosts],
        ports=plan.ports.named(), dashboard_url=plan.dashboard_url, state_dir=plan.state_dir,
        transport={"kind": t.kind, "ssh_config": s.ssh_config, "user": s.user, "key": s.key, "port": s.port,
                   "known_hosts": s.known_hosts, "connect_timeout": s.connect_timeout,
                   "job_id": alloc.extra.get("job_id")},
    )
    cluster = RayCluster(plan, t, run_dir=rd, reporter=reporter, join_timeout_s=join_timeout_s, recipe=r)
    cluster.reused = False
    import secrets

    cluster.token = secrets.token_hex(32)
    tok = rd.path / "auth_token"
    fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(cluster.token + "\n")
    t0 = time.monotonic()
    try:
        cluster.up()
    except GlmlaunchError as e:
        e.hint = f"{e.hint + '; ' if e.hint else ''}what each host printed is in {rd.path}/hosts/"
        raise
    rd.make_current()
    rd.event("up", seconds=round(time.monotonic() - t0, 2))
    return cluster


def _watchdog(cluster: RayCluster, every_s: float = 10.0):
    """A ``check`` for :func:`jobs.follow`: raises :class:`ClusterError` naming any node that is no
    longer alive (saves GPU-hours instead of letting the trainer hang)."""
    last = [time.monotonic()]

    def check() -> None:
        if time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        ended = getattr(cluster.transport, "ended_steps", None)  # srun: a node's Slurm step is gone
        gone = ended() if ended else {}
        if gone:
            raise ClusterError(f"{len(gone)} node(s) lost their Ray step while the job was running: "
                               + "; ".join(f"{h}: {why}" for h, why in gone.items()), missing=gone,
                               hint="the job was stopped; look at the node (sacct -j JOB, its slurmd log), then launch again "
                                    "(training resumes from the last checkpoint)")
        try:
            st = cluster.status()
        except GlmlaunchError:
            return
        dead = {h: "left the cluster (Ray reports it dead)" for h, v in st.nodes.items() if not v["alive"]}
        if dead and not st.problems:
            raise ClusterError(f"{len(dead)} node(s) died while the job was running: {', '.join(dead)}", missing=dead,
                               hint="the job was stopped; look at the node, then launch again (training resumes from the last checkpoint)")

    return check


def submit_and_follow(
    cluster: RayCluster,
    *,
    reporter: Reporter | None = None,
    follow: bool = True,
    watchdog_s: float = 10.0,
    stop: threading.Event | None = None,
) -> jobs.JobResult | None:
    """Submit the plan's trainer to ``cluster`` and (with ``follow``) stream its log until the job
    ends. Writes ``job.log`` in the run directory. A dead node stops the job."""
    reporter = reporter or NullReporter()
    plan = cluster.plan
    if cluster.run_dir and cluster.run_dir.manifest.get("state") not in ("up", "running", "finished"):
        raise ClusterError(f"run {plan.run_id} is not up (state: {cluster.run_dir.manifest.get('state')})",
                           hint="start it with `glmlaunch up`, or launch everything with `glmlaunch launch`")
    client = jobs.client_for(plan, cluster.token)
    done = cluster.run_dir.manifest.get("submissions", []) if cluster.run_dir else []
    live = [s for s in done if jobs.job_status(client, s) not in jobs.TERMINAL]
    if live:  # two trainers on one cluster would share GPUs and one checkpoint directory
        raise JobError(f"job {live[-1]} is still running on this cluster",
                       "follow it with `glmlaunch logs --follow`, or stop it with `glmlaunch down`, then submit again")
    sid = plan.submission_id if not done else f"{plan.submission_id}-{len(done) + 1}"  # a kept cluster's next job
    reporter.step(f"submitting {plan.trainer_kind} job {sid}")
    sid = jobs.submit(plan, cluster.token, client=client, submission_id=sid)
    if cluster.run_dir:
        cluster.run_dir.update(state="running", submission_id=sid, submissions=[*done, sid])
        cluster.run_dir.event("submitted", submission_id=sid)
    reporter.done("submit", True, sid)
    if not follow:
        return None
    logf = open(cluster.run_dir.path / "job.log", "a") if cluster.run_dir else None

    def on_text(text: str) -> None:
        if logf:
            logf.write(text)
            logf.flush()
        reporter.log_line(text)

    try:
        result = jobs.follow(client, sid, on_text, check=_watchdog(cluster, watchdog_s), stop=stop)
    except (ClusterError, OSError) as e:  # a node died / the head's job API is gone (requests' errors are OSErrors)
        try:
            jobs.stop_job(client, sid, grace_s=150)
        except Exception as se:  # the error that stopped us matters more
            log.warning("could not stop job %s: %s", sid, se)
        if isinstance(e, ClusterError):
            raise
        head = plan.head.name
        raise ClusterError(f"the head node {head} stopped answering while job {sid} was running "
                           f"({plan.dashboard_url}: {e})", missing={head: "the Ray job API does not answer"},
                           hint="look at the head node and its Ray logs (glmlaunch status), then launch again "
                                "(training resumes from the last checkpoint)") from None
    except BaseException:
        try:
            reporter.step("stopping the job (grace period for a checkpoint)")
            jobs.stop_job(client, sid, grace_s=150)
        except Exception as e:
            log.warning("could not stop job %s: %s", sid, e)
        raise
    finally:
        if logf:
            logf.close()
    if cluster.run_dir:
        cluster.run_dir.update(state="finished", job={"status": result.status, "exit_code": result.exit_code,
                                                      "message": result.message[:2000], "seconds": round(result.duration_s, 1)})
    return result


def launch(
    recipe: str | Path | dict | Recipe = DEFAULT_RECIPE,
    hostfile: str | None = None,
    *,
    keep: bool = False,
    follow: bool = True,
    dry_run: bool = False,
    deep: bool = True,
    reporter: Reporter | None = None,
    **up_kwargs,
) -> LaunchResult:
    """Checks, up, submit, follow, down: the whole main job in one call.

    ``recipe``: a template name (default: the local probe), a path, a mapping or a
    :class:`Recipe`; ``hostfile``: an MPI hostfile (default: ``/root/mpi_rack_hostfile``, or the
    Slurm allocation, or this machine for the probe). With ``keep`` the cluster stays up after
    the job; ``dry_run`` only builds and checks the plan. Other keyword arguments go to :func:`up`.

    Returns a :class:`LaunchResult` (``result.ok`` tells whether the trainer succeeded). Raises
    :class:`CheckFailed` before anything starts, :class:`ClusterError`/:class:`TransportError`
    (rolled back), :class:`~glmlaunch.errors.JobError`.
    """
    reporter = reporter or NullReporter()
    import inspect

    unknown = set(up_kwargs) - set(inspect.signature(up).parameters)
    if unknown:
        raise TypeError(f"launch() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    if dry_run:
        keys = ("overrides", "local", "head", "gpus_per_node", "port_base", "dashboard_port", "python", "env",
                "network", "interface", "ssh", "transport")
        _, _, plan = prepare(recipe, hostfile, deep=deep, **{k: v for k, v in up_kwargs.items() if k in keys})
        return LaunchResult(plan=plan, run_dir=None, findings=plan.findings)
    cluster = up(recipe, hostfile, deep=deep, reporter=reporter, **up_kwargs)
    try:
        result = submit_and_follow(cluster, reporter=reporter, follow=follow)
        probe = None
        if result is not None and cluster.plan.trainer_kind == "probe" and cluster.run_dir:
            from .probe import parse_report

            probe = parse_report((cluster.run_dir.path / "job.log").read_text())
        return LaunchResult(plan=cluster.plan, run_dir=cluster.run_dir.path if cluster.run_dir else None, job=result,
                            probe=probe, findings=cluster.preflight_findings)
    finally:
        if not keep and not getattr(cluster, "reused", False):
            cluster.down()


def open_run(run: str | None = None, runs_dir: str | None = None, reporter: Reporter | None = None) -> RayCluster:
    """The cluster handle of a run started earlier (by id or path; default: the current run)."""
    rd = RunDir.open(run, runs_dir)
    return RayCluster.from_run(rd, transport_from_manifest(rd.manifest), reporter=reporter)


__all__ = ["LaunchResult", "SSHOptions", "launch", "open_run", "plan_to_dict", "prepare", "submit_and_follow", "up"]
