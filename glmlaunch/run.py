"""The library's handle on a run, and the three ways in.

- :func:`plan_launch`: load the recipe, find the nodes (one policy, :func:`glmlaunch.hosts.discover`),
  resolve, build the plan and run every check (:func:`glmlaunch.checks.run`). Touches no node
  (except to read addresses for ``network``/``interface``, and the read-only preflight when asked).
- :class:`Run`: one run's plan, run directory and cluster. ``up``, ``submit``, ``status``,
  ``logs``, ``down``, the same from a notebook as from the CLI; :meth:`Run.open` gives the handle
  of a run started earlier, from any shell.
- :func:`up` and :func:`launch`: plan, check and bring a run up (``launch``: and submit, follow,
  take down).

Safe in a notebook: nothing here prints or exits; errors are exceptions, progress goes to a
:class:`~glmlaunch.progress.Reporter`, and Ctrl-C stops the job (with its grace period) and the
cluster before it propagates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import checks, jobs
from .cluster import ClusterStatus, RayCluster
from .errors import ClusterError, Finding, Findings, GlmlaunchError, JobError, UsageError
from .hosts import Allocation, AllocationKind, Host, discover, is_ifname, plain_option, shown
from .options import Defaults, SSHOptions, check_seconds
from .plan import LaunchPlan, NodePlan, PortPlan, build_plan
from .progress import NullReporter, Reporter
from .recipe import Recipe, load_recipe
from .render import render_bash, render_json
from .resolve import Resolved, resolve
from .runs import HostRecord, JobRecord, RunDir, RunState, TransportRecord
from .transport import Transport

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "local-probe"


# ----------------------------------------------------------------------------- transports


def transport_record(alloc: Allocation, ssh: SSHOptions | None = None) -> TransportRecord:
    """How to reach an allocation's nodes, as ``manifest.json`` keeps it: local subprocesses for
    this machine, ``srun`` job steps inside Slurm, SSH (Fabric) with ``ssh`` for a hostfile.
    Raises :class:`UsageError` for placeholder nodes (nothing can run on them)."""
    if alloc.kind is AllocationKind.PLACEHOLDER:
        raise UsageError(
            f"nothing to start on: the nodes are placeholders ({alloc.origin}), and this is not a "
            "Slurm allocation; placeholders can be rendered and checked, not started",
            "pass --hostfile PATH, run inside salloc/sbatch, or use --local for a one-machine run",
        )
    kind = {AllocationKind.LOCAL: "local", AllocationKind.SLURM: "srun"}.get(alloc.kind, "ssh")
    s = ssh or SSHOptions()
    return TransportRecord(
        kind=kind,
        ssh_config=s.ssh_config,
        user=s.user,
        key=s.key,
        port=s.port,
        known_hosts=s.known_hosts,
        connect_timeout=s.connect_timeout,
        job_id=alloc.job_id,
    )


def transport_from_record(t: TransportRecord) -> Transport:
    """The transport a record describes (a new run's, or a run started earlier)."""
    if t.kind == "local":
        from .transport.local import LocalTransport

        return LocalTransport()
    if t.kind == "srun":
        from .transport.srun import SrunTransport

        return SrunTransport(job_id=t.job_id)
    from .transport.ssh import SSHTransport

    return SSHTransport(
        ssh_config=t.ssh_config,
        user=t.user,
        key=t.key,
        port=t.port,
        known_hosts=t.known_hosts,
        connect_timeout=t.connect_timeout,
    )


def make_transport(alloc: Allocation, ssh: SSHOptions | None = None) -> Transport:
    """The transport of an allocation's kind (:func:`transport_record`)."""
    return transport_from_record(transport_record(alloc, ssh))


# ----------------------------------------------------------------------------- planning


@dataclass
class Planned:
    """What :func:`plan_launch` decided: the recipe, the nodes, the resolved values, the plan and
    every finding (errors first)."""

    recipe: Recipe
    alloc: Allocation
    resolved: Resolved
    plan: LaunchPlan
    findings: Findings


def plan_launch(
    recipe: str | Path | dict | Recipe = DEFAULT_RECIPE,
    hostfile: str | None = None,
    *,
    overrides: list[str] | None = None,
    local: bool = False,
    nodes: int | None = None,
    head: str | None = None,
    gpus_per_node: int | None = None,
    port_base: int | None = None,
    dashboard_port: int | None = None,
    python: str | None = None,
    run_id: str | None = None,
    deep: bool = False,
    preflight: bool = False,
    env: dict | None = None,
    network: str | None = None,
    interface: str | None = None,
    ssh: SSHOptions | None = None,
    transport: Transport | None = None,
    reporter: Reporter | None = None,
    origin: str | None = None,
    startable: bool = False,
    spares: str | None = None,
) -> Planned:
    """Load the recipe, find the nodes, resolve, build the plan and run the checks: the same
    steps, in the same order, for ``render``, ``check``, ``up``, ``launch``, ``launch --dry-run``
    and :func:`glmlaunch.slurm.submit`, so the same inputs give the same plan.

    Nodes (:func:`glmlaunch.hosts.discover`): ``local``, ``hostfile``, ``nodes`` placeholders,
    the Slurm allocation, ``/root/mpi_rack_hostfile``, else the recipe's node count (this machine
    for one node or the probe, placeholders for more). ``network`` (CIDR) / ``interface`` pick
    each node's address in one round over the nodes. ``deep`` adds megatron-core, SGLang and HF
    config checks; ``preflight`` the read-only round on every real node. ``startable``: refuse
    placeholder nodes at once (:class:`~glmlaunch.errors.UsageError`), before any check.
    ``spares``: a hostfile of spare hosts (hostfile mode; hosts beyond ``cluster.nodes`` in the
    hostfile are spares too): ``alloc.spares``, never in the plan. Never raises for a
    finding: see ``findings`` (and :meth:`~glmlaunch.errors.Findings.raise_for_errors`). Raises
    :class:`~glmlaunch.errors.UsageError`/``HostfileError``/``RecipeError`` for bad input.
    """
    plain_option("--python", python, "pass the Python of the nodes as a path, e.g. /opt/venv/bin/python3")
    plain_option("--network", network, "write it as CIDR, e.g. 10.4.0.0/16")
    plain_option("--head", head, "pass the head node's name or address as the hostfile writes it")
    plain_option("--spares", spares, "pass the spare hosts as the path of a hostfile")
    if interface is not None and not is_ifname(interface):
        raise UsageError(
            f"--interface '{shown(interface)}': not a network interface name",
            "pass a name as `ip -br link` shows it (1-15 characters, no '/', ':' or spaces), e.g. eth0",
        )
    if ssh is not None:
        ssh.validate()
    r = load_recipe(recipe, overrides)
    if interface and not r.env.interface:
        r.env.interface = interface  # GLOO/TP/NCCL_SOCKET_IFNAME follow the chosen interface
    fallback = 1 if r.trainer.kind == "probe" else (r.cluster.nodes or 1)
    alloc = discover(
        hostfile,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        head=head,
        local=local,
        env=env,
        fallback_nodes=fallback,
        origin=origin,
        want_nodes=r.cluster.nodes,
        spares=spares,
    )
    if startable and alloc.placeholder:
        make_transport(alloc)  # raises: nothing can start on placeholders
    if (network or interface) and not alloc.placeholder:
        from .network import select_addresses

        alloc = select_addresses(
            alloc,
            transport or make_transport(alloc, ssh),
            python=python or sys.executable,
            network=network,
            interface=interface,
            setup=[r.expand(x) for x in r.cluster.setup],
        )
    res = resolve(r, alloc)
    ports = PortPlan(
        base=Defaults.port_base if port_base is None else port_base,
        dashboard=Defaults.dashboard_port if dashboard_port is None else dashboard_port,
    )
    plan = build_plan(r, alloc, resolved=res, run_id=run_id, ports=ports, python=python)

    def node_round() -> list[Finding]:
        c = RayCluster(plan, transport or make_transport(alloc, ssh), recipe=r, reporter=reporter)
        try:
            return c.inspect()
        finally:
            c.transport.close()

    found = checks.run(res, plan, deep=deep, nodes=node_round if preflight else None)
    return Planned(r, alloc, res, plan, found)


def _refuse(p: Planned) -> None:
    errors = p.findings.errors
    only_ports = errors and all(f.field.startswith("ports") for f in errors)
    p.findings.raise_for_errors(
        "move Ray's ports with --port-base / --dashboard-port" if only_ports else None
    )


# ----------------------------------------------------------------------------- the handle


@dataclass
class JobState:
    """One job of a run as :meth:`Run.status` sees it: Ray's status (or the recorded one when the
    cluster is gone) and the exit code where known."""

    submission_id: str
    status: str
    exit_code: int | None = None


@dataclass
class RunStatus:
    """:meth:`Run.status`: the run's state, the cluster's nodes (``None`` when it is down) and
    every job it submitted."""

    run_id: str
    state: RunState
    cluster: ClusterStatus | None
    jobs: list[JobState] = field(default_factory=list)
    attempts: list = field(default_factory=list)  # the manifest's Attempt records, oldest first
    spares: list[str] = field(default_factory=list)  # spare hosts left (never started)
    excluded: dict[str, str] = field(default_factory=dict)  # host -> why it is out for the rest of the run


class Run:
    """One run: its plan, its run directory (``runs/<run-id>/``) and its Ray cluster.

    ``Run(plan, transport, ...)`` is a run not started yet (:func:`up` makes one); :meth:`open`
    gives the handle of a run started earlier. Use as a context manager to take the run down on
    exit. Raises the errors of :mod:`glmlaunch.errors`; never prints.
    """

    def __init__(
        self,
        plan: LaunchPlan,
        transport: Transport,
        run_dir: RunDir | None = None,
        *,
        recipe: Recipe | None = None,
        reporter: Reporter | None = None,
        token: str | None = None,
        join_timeout_s: float = Defaults.join_timeout_s,
        cluster: RayCluster | None = None,
    ):
        self.plan = plan
        self.run_dir = run_dir
        self.reporter = reporter or NullReporter()
        self.cluster = cluster or RayCluster(
            plan,
            transport,
            run_dir=run_dir,
            reporter=self.reporter,
            join_timeout_s=join_timeout_s,
            recipe=recipe,
            token=token,
        )
        self.reused = False

    # ------------------------------------------------------------------ what it is

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    @property
    def path(self) -> Path | None:
        return self.run_dir.path if self.run_dir else None

    @property
    def state(self) -> RunState:
        """The run's state as saved now (another handle may have moved it)."""
        return self.run_dir.reload().state if self.run_dir else RunState.CREATED

    @property
    def token(self) -> str | None:
        return self.cluster.token

    @property
    def transport(self) -> Transport:
        return self.cluster.transport

    @property
    def preflight_findings(self) -> list[Finding]:
        return self.cluster.preflight_findings

    @classmethod
    def open(
        cls,
        ref: str | os.PathLike | None = None,
        runs_dir: str | os.PathLike | None = None,
        reporter: Reporter | None = None,
        transport: Transport | None = None,
    ) -> Run:
        """The handle of a run started earlier (by id or path; default: the current run), reached
        through ``transport`` (default: the one its manifest records)."""
        rd = RunDir.open(ref, runs_dir)
        c = RayCluster.from_run(
            rd, transport or transport_from_record(rd.manifest.transport), reporter=reporter
        )
        return cls(c.plan, c.transport, rd, reporter=reporter, cluster=c)

    # ------------------------------------------------------------------ lifecycle

    def up(
        self,
        runs_dir: str | os.PathLike | None = None,
        recipe: Recipe | None = None,
        ssh: SSHOptions | None = None,
        alloc: Allocation | None = None,
    ) -> ClusterStatus:
        """Create the run directory (plan, commands, manifest, token), then start the cluster and
        return once every node and GPU has joined. A failed start is rolled back (nothing left
        running) and does not become the current run. Raises :class:`ClusterError` /
        :class:`~glmlaunch.errors.TransportError` / :class:`~glmlaunch.errors.CheckFailed`."""
        plan = self.plan
        if self.run_dir is None:
            rd = RunDir.create(plan.run_id, runs_dir, current=False)
            rd.write("plan.json", render_json(plan))
            rd.write("commands.sh", render_bash(plan))
            rd.update(
                recipe=plan.recipe,
                recipe_source=plan.recipe_source,
                submission_id=plan.submission_id,
                hosts=[HostRecord(name=n.name, address=n.address, gpus=n.gpus) for n in plan.nodes],
                ports=plan.ports.named,
                dashboard_url=plan.dashboard_url,
                state_dir=plan.state_dir,
                transport=transport_record(alloc, ssh)
                if alloc
                else TransportRecord(kind=self.transport.kind),
                spares=[_host_record(h) for h in alloc.spares] if alloc else [],
            )
            recipe = recipe or self.cluster.recipe
            if recipe is not None:  # the next attempt's plan is built from it (Run.supervise)
                self.cluster.recipe = recipe
                rd.write("recipe.json", recipe.model_dump_json(indent=1))
            self.run_dir = self.cluster.run_dir = rd
        rd = self.run_dir
        self.cluster.token = self.cluster.token or secrets.token_hex(32)
        rd.write_token(self.cluster.token)
        t0 = time.monotonic()
        try:
            status = self.cluster.up()
        except GlmlaunchError as e:
            e.hint = f"{e.hint + '; ' if e.hint else ''}what each host printed is in {rd.path}/hosts/"
            raise
        rd.make_current()
        rd.event("up", seconds=round(time.monotonic() - t0, 2))
        return status

    def _client(self):
        return jobs.client_for(self.plan, self.token)

    def submit(
        self,
        *,
        follow: bool = True,
        stop: threading.Event | None = None,
        watchdog_s: float = Defaults.watchdog_s,
        hang_timeout_s: float | None = None,
    ) -> jobs.JobResult | None:
        """Submit the plan's trainer and (with ``follow``) stream its log to the reporter and
        ``job.log`` until it ends; returns its :class:`~glmlaunch.jobs.JobResult` (``None``
        without ``follow``). A second trainer while one runs is refused (:class:`JobError`); a
        node that dies stops the job (:class:`ClusterError` naming it); Ctrl-C stops the job with
        its grace period before propagating."""
        plan, rd = self.plan, self.run_dir
        if rd is not None and not rd.manifest.state.cluster_up:
            raise ClusterError(
                f"run {plan.run_id} is not up (state: {rd.manifest.state})",
                hint="start it with `glmlaunch up`, or launch everything with `glmlaunch launch`",
            )
        client = self._client()
        done = list(rd.manifest.submissions) if rd else []
        live = [s for s in done if jobs.job_status(client, s) not in jobs.TERMINAL]
        if live:  # two trainers on one cluster would share GPUs and one checkpoint directory
            raise JobError(
                f"job {live[-1]} is still running on this cluster",
                "follow it with `glmlaunch logs --follow`, or stop it with `glmlaunch down`, then submit again",
            )
        sid = (
            plan.submission_id if not done else f"{plan.submission_id}-{len(done) + 1}"
        )  # a kept cluster's next job
        self.reporter.step(f"submitting {plan.trainer_kind} job {sid}")
        sid = jobs.submit(plan, self.token, client=client, submission_id=sid)
        if rd:
            rd.update(state=RunState.RUNNING, submission_id=sid, submissions=[*done, sid])
            rd.event("submitted", submission_id=sid)
        self.reporter.done("submit", True, sid)
        if not follow:
            return None
        logf = None
        if rd:
            fd = os.open(rd.path / "job.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            logf = os.fdopen(fd, "a")

        last_line = [time.monotonic()]
        first = [True]

        def on_text(text: str) -> None:
            last_line[0] = time.monotonic()
            if first[0] and rd and text.strip():
                first[0] = False
                rd.event("first log line", submission_id=sid)
            if logf:
                logf.write(text)
                logf.flush()
            self.reporter.log_line(text)

        try:
            check = _watchdog(self.cluster, watchdog_s, last_line=last_line, hang_timeout_s=hang_timeout_s)
            result = jobs.follow(client, sid, on_text, check=check, stop=stop)
        except (
            ClusterError,
            OSError,
        ) as e:  # a node died / the head's job API is gone (requests' errors are OSErrors)
            _stop_quietly(client, sid)
            if isinstance(e, ClusterError):
                raise
            head = plan.head.name
            raise ClusterError(
                f"the head node {head} stopped answering while job {sid} was running "
                f"({plan.dashboard_url}: {e})",
                missing={head: "the Ray job API does not answer"},
                hint="look at the head node and its Ray logs (glmlaunch status), then launch again "
                "(training resumes from the last checkpoint)",
            ) from None
        except BaseException:
            self.reporter.step("stopping the job (grace period for a checkpoint)")
            _stop_quietly(client, sid)
            raise
        finally:
            if logf:
                logf.close()
        if rd:
            rd.update(
                state=RunState.FINISHED,
                job=JobRecord(
                    status=result.status,
                    exit_code=result.exit_code,
                    message=result.message[:2000],
                    seconds=round(result.duration_s, 1),
                ),
            )
        return result

    # ------------------------------------------------------------------ supervision

    def _save_dir(self) -> str | None:
        argv = list(self.plan.argv)
        return argv[argv.index("--save") + 1] if "--save" in argv[:-1] else None

    def checkpoint_state(self) -> dict | None:
        """What the head node finds under the trainer's ``--save``
        (:func:`glmlaunch.nodeops.latest_complete`: the tracker's iteration, the newest complete
        one, the torn ones); ``None`` without ``--save`` or when the head does not answer."""
        save = self._save_dir()
        if not save:
            return None
        head = self.plan.head.name
        parsed, r = self.cluster._nodeop("checkpoint", {head: {"save": save}}, timeout=60)[head]
        if parsed is None:
            log.warning("cannot read the checkpoints under %s on %s: %s", save, head, r.reason())
        return parsed

    def _recipe(self) -> Recipe:
        """The run's recipe (overrides applied): the handle's, else ``recipe.json`` of the run
        directory (written by :meth:`up`). Raises :class:`UsageError` when there is neither."""
        r = self.cluster.recipe
        f = self.run_dir.path / "recipe.json" if self.run_dir else None
        if r is None and f is not None and f.is_file():
            from .recipe import recipe_from_dict

            r = self.cluster.recipe = recipe_from_dict(json.loads(f.read_text()), self.plan.recipe_source)
        if r is None:
            raise UsageError(
                f"run {self.run_id}: its recipe is not known, so the next attempt cannot be planned",
                "supervise a run started by glmlaunch up/launch (they keep recipe.json in the run directory)",
            )
        return r

    def _plan_hosts(self) -> list[Host]:
        """The plan's nodes as :class:`~glmlaunch.hosts.Host` (head first), as discovery gave them."""
        return [_host_of(n) for n in self.plan.nodes]

    def _spare_hosts(self) -> list[Host]:
        """The run's spares left (the manifest's ``spares``), in order."""
        if self.run_dir is None:
            return []
        return [_host_of(h) for h in self.run_dir.manifest.spares]

    def _build(self, hosts: list[Host]) -> LaunchPlan:
        """:func:`~glmlaunch.plan.build_plan` of the run's recipe on ``hosts`` (head first) with the
        run's id, ports, Python and state root and a new random state-directory part; the
        trainer's argv is carried over (``trainer_argv`` reads only the layout, which a restart
        keeps, and a resubmit runs the same job; ``--ckpt-step`` is set by
        :func:`glmlaunch.recovery.resume_args`)."""
        from pathlib import PurePosixPath

        old = self.plan
        kind = AllocationKind.LOCAL if old.local else AllocationKind.HOSTFILE
        if self.transport.kind == "srun":
            kind = AllocationKind.SLURM
        alloc = Allocation(
            hosts=tuple(hosts), gpus_per_node=old.gpus_per_node, kind=kind, origin=f"run {old.run_id}"
        )
        plan = build_plan(
            self._recipe(),
            alloc,
            run_id=old.run_id,
            ports=old.ports,
            python=old.python,
            state_root=str(PurePosixPath(old.state_dir).parent),
        )
        return plan.model_copy(update={"argv": list(old.argv)})

    def _replan(self, hosts: list[Host] | None = None) -> None:
        """A new plan and cluster handle for the next attempt, on ``hosts`` (default: the same
        nodes), built by :meth:`_build` (new state directories: every node directory of the last
        attempt stays as it was, its Ray logs included). Written to the run directory (the old
        plan kept as ``plan-<attempt>.json``) with the manifest's hosts."""
        old = self.plan
        plan = self._build(hosts or self._plan_hosts())
        rd = self.run_dir
        if rd is not None:
            rd.write(f"plan-{len(rd.manifest.attempts)}.json", render_json(old))
            rd.write("plan.json", render_json(plan))
            rd.write("commands.sh", render_bash(plan))
            rd.update(
                state_dir=plan.state_dir,
                nodes={},
                hosts=[HostRecord(name=n.name, address=n.address, gpus=n.gpus) for n in plan.nodes],
                dashboard_url=plan.dashboard_url,
            )
        c = self.cluster
        self.plan = plan
        self.cluster = RayCluster(
            plan,
            c.transport,
            run_dir=rd,
            reporter=self.reporter,
            join_timeout_s=c.join_timeout_s,
            command_timeout_s=c.command_timeout_s,
            stop_grace_s=c.stop_grace_s,
            recipe=c.recipe,
            token=c.token,
        )

    def _next_nodes(self) -> dict[str, str]:
        """The next attempt's nodes: one read-only round (:meth:`RayCluster.node_faults`) over the
        nodes and the spares left; each node that does not answer or fails its own checks is
        replaced, in place, by the first spare that passes (:func:`glmlaunch.recovery.replace_nodes`:
        same GPUs per node, same world size) and recorded in the manifest's ``excluded`` for the
        rest of the run. Builds the next plan (:meth:`_replan`). Returns bad node -> its spare.
        Raises :class:`ClusterError` naming the bad nodes that no spare is left for (never a
        smaller world)."""
        from . import recovery

        rd = self.run_dir
        active, spares = self._plan_hosts(), self._spare_hosts()
        names = {h.name for h in active}
        spares = [s for s in spares if s.name not in names]
        check = RayCluster(
            self._build(active + spares),
            self.transport,
            reporter=self.reporter,
            command_timeout_s=self.cluster.command_timeout_s,
            recipe=self._recipe(),
        )
        self.reporter.step(
            f"checking the nodes{f' and {len(spares)} spare(s)' if spares else ''} before the restart",
            total=len(active) + len(spares),
        )
        faults = check.node_faults()
        for h in [*active, *spares]:
            self.reporter.host(
                "node check", h.name, "failed" if h.name in faults else "ok", faults.get(h.name, "")
            )
        bad = {h.name: faults[h.name] for h in active if h.name in faults}
        bad_spares = {s.name: faults[s.name] for s in spares if s.name in faults}
        if rd and bad_spares:
            rd.event("spares failed their check", hosts=bad_spares)
        if rd and bad:
            rd.update(excluded={**rd.manifest.excluded, **bad})
        try:
            order, _, swapped = recovery.replace_nodes(
                [h.name for h in active], [s.name for s in spares if s.name not in bad_spares], bad
            )
        except ClusterError as e:
            self.reporter.done("node check", False, e.message)
            if rd:
                rd.event("no spare left", hosts=dict(e.missing or {}))
            raise
        self.reporter.done(
            "node check",
            True,
            "; ".join(f"{b} replaced by spare {s}" for b, s in swapped.items()) or "every node passes",
        )
        by_name = {h.name: h for h in [*active, *spares]}
        if rd:
            rd.update(
                spares=[_host_record(s) for s in spares if s.name not in swapped.values()],
            )
            if swapped:
                rd.event("nodes replaced", replaced=swapped, why=bad)
        self._replan([by_name[n] for n in order])
        return swapped

    def supervise(
        self,
        *,
        max_restarts: int = 0,
        restart_on: str = "cluster",
        watchdog_s: float = Defaults.watchdog_s,
        hang_timeout_s: float | None = None,
        backoff_base_s: float = Defaults.restart_backoff_s,
        backoff_max_s: float = Defaults.restart_backoff_max_s,
        sleep=time.sleep,
    ) -> jobs.JobResult:
        """Submit the trainer and follow it; when an attempt fails for a cluster cause (a node
        lost, a raylet/GCS/driver dead, the head gone, the hang watchdog; or any failure with
        ``restart_on="any"``) and restarts are left: collect the crash bundle, stop the job (its
        grace period) and the cluster, wait the back-off (:func:`glmlaunch.recovery.backoff_s`),
        bring the cluster back (preflight included) and submit again, resuming from the run's
        newest complete checkpoint (``--ckpt-step`` when the latest is torn). Every attempt is
        recorded in the manifest (:class:`~glmlaunch.runs.Attempt`). Returns the last attempt's
        :class:`~glmlaunch.jobs.JobResult`; raises the last attempt's error (a
        :class:`ClusterError` naming the hosts, ...) when it ended without a result, or when the
        cluster cannot be brought back. A trainer failure with every node healthy is not
        restarted by default (``restart_on="cluster"``)."""
        from . import bundle, recovery
        from .runs import Attempt

        check_supervision(max_restarts, restart_on, hang_timeout_s, backoff_base_s)
        rd = self.run_dir
        number = len(rd.manifest.attempts) if rd else 0
        restarts = 0
        replaced: dict[str, str] = {}
        while True:
            number += 1
            found = self.checkpoint_state()
            argv, note = recovery.resume_args(list(self.plan.argv), found)
            if argv != list(self.plan.argv):
                self.plan = self.cluster.plan = self.plan.model_copy(update={"argv": argv})
                if rd:
                    rd.write("plan.json", render_json(self.plan))
            if found and found.get("torn"):
                self.reporter.done("checkpoints", True, note)
            att = Attempt(
                number=number,
                nodes=[n.name for n in self.plan.nodes],
                resumed_from=(found or {}).get("iteration"),
                resume_note=note,
                replaced=replaced,
            )
            if rd:
                rd.update(attempts=[*rd.manifest.attempts, att])
                rd.event("attempt", number=number, resume=note)
            result, error = None, None
            try:
                result = self.submit(watchdog_s=watchdog_s, hang_timeout_s=hang_timeout_s)
            except (ClusterError, JobError) as e:
                error = e
            dead: dict[str, str] = {}
            if result is None or not result.ok:
                try:
                    st = self.cluster.status()
                    dead = {h: "Ray reports it dead" for h, v in st.nodes.items() if not v["alive"]}
                    dead.update(st.unreachable)
                except GlmlaunchError as e:
                    log.warning("cannot read the cluster's state after the failure: %s", e)
            tail = (rd.path / "job.log").read_text(errors="replace")[-20000:] if rd else ""
            cause = recovery.classify(result, error, dead_nodes=dead, log_tail=tail)
            att.ended = time.time()
            att.submission_id = result.submission_id if result else (rd.manifest.submission_id if rd else "")
            att.status = result.status if result else "failed"
            att.exit_code = result.exit_code if result else None
            att.cause, att.detail, att.hosts = cause.kind.value, cause.detail, dict(cause.hosts)
            if cause.kind is not recovery.CauseKind.NONE:
                d = bundle.collect(self, number, cause=cause)
                att.bundle = str(d or "")
            again = recovery.should_restart(cause, restart_on, max_restarts - restarts)
            att.restarted = again
            if rd:
                rd.update(attempts=[*rd.manifest.attempts[:-1], att])
            if not again:
                if rd and cause.kind is not recovery.CauseKind.NONE:
                    rd.event(
                        "supervision ended",
                        cause=cause.kind.value,
                        detail=cause.detail,
                        restarts=restarts,
                        max_restarts=max_restarts,
                    )
                if result is None:
                    assert error is not None
                    raise error
                return result
            restarts += 1
            wait = recovery.backoff_s(restarts, base_s=backoff_base_s, max_s=backoff_max_s)
            self.reporter.step(
                f"attempt {number} failed ({cause.kind}: {cause.detail}); restart {restarts} of "
                f"{max_restarts} in {wait:.0f} s"
            )
            if rd:
                rd.event("restart", number=number + 1, cause=cause.kind.value, wait_s=wait)
            self.down()
            sleep(wait)
            try:
                replaced = self._next_nodes()
            except ClusterError as e:
                att.restarted = False
                if rd:
                    rd.update(attempts=[*rd.manifest.attempts[:-1], att])
                    rd.event(
                        "supervision ended", cause="no spare left", detail=e.message, restarts=restarts - 1
                    )
                raise
            self.up()

    def status(self) -> RunStatus:
        """The run's state, its nodes as Ray sees them (when the run is up) and every job's
        status (Ray's, or the recorded one when the cluster is gone)."""
        state = self.state
        cluster = self.cluster.status() if state.cluster_up else None
        subs = list(self.run_dir.manifest.submissions) if self.run_dir else []
        client = None
        if subs and cluster is not None:
            try:
                client = self._client()
            except GlmlaunchError:
                client = None
        last = self.run_dir.manifest.job if self.run_dir else None
        kept = dict(self.run_dir.manifest.job_states) if self.run_dir else {}
        out = []
        for sid in subs:
            st = jobs.job_status(client, sid) if client is not None else "UNKNOWN"
            code = None
            rec = kept.get(sid) or (last if sid == subs[-1] else None)
            if rec is not None:
                code = rec.exit_code
                if st == "UNKNOWN":
                    st = rec.status
            if st == "UNKNOWN" and cluster is None:
                st = "not known (the cluster is down)"
            out.append(JobState(sid, st, code))
        m = self.run_dir.manifest if self.run_dir else None
        return RunStatus(
            self.run_id,
            state,
            cluster,
            out,
            list(m.attempts) if m else [],
            [h.name for h in m.spares] if m else [],
            dict(m.excluded) if m else {},
        )

    def logs(self, *, follow: bool = False, on_text=None) -> str:
        """The log of the run's last job: from Ray while the cluster is up (with ``follow``,
        streamed to ``on_text`` until the job ends), else the copy kept in the run directory.
        Raises :class:`JobError` when there is no job or no log to show."""
        rd = self.run_dir
        sid = rd.manifest.submissions[-1] if rd and rd.manifest.submissions else None
        if rd is None or sid is None:
            raise JobError(
                f"run {self.run_id} has no job yet",
                "glmlaunch submit"
                if self.state.cluster_up
                else "glmlaunch up, then glmlaunch submit (or glmlaunch launch)",
            )
        saved = [p for p in (rd.path / f"{sid}.log", rd.path / "job.log") if p.exists()]
        try:
            if not self.state.cluster_up:
                raise JobError(f"run {self.run_id} is {self.state}")
            client = self._client()
            if follow:
                parts: list[str] = []

                def deliver(t: str) -> None:
                    parts.append(t)
                    if on_text:
                        on_text(t)

                jobs.follow(client, sid, deliver)
                return "".join(parts)
            text = client.get_job_logs(sid)
            if on_text:
                on_text(text)
            return text
        except Exception as e:  # the cluster is gone: show what was kept
            if not saved:
                raise JobError(
                    f"cannot read the log of job {sid}: {str(e)[:300]}",
                    "the cluster is not up and no copy of the log was kept in the run directory",
                ) from None
            log.info("the cluster does not answer (%s); showing %s", str(e)[:200], saved[0])
            text = saved[0].read_text()
            if on_text:
                on_text(text)
            return text

    def down(self, purge: bool = False, grace_s: float = Defaults.job_stop_wait_s) -> dict[str, dict]:
        """Stop every live job of the run with its grace period (SIGTERM: the trainer saves a
        checkpoint; up to ``grace_s`` seconds), keep each job's log in the run directory, then
        stop exactly the Ray processes this run started. With ``purge`` the state directories
        this run created on the nodes (recorded in the manifest) go too, each only while it is still
        this user's private directory. Returns host -> what was stopped. Idempotent."""
        rd = self.run_dir
        subs = list(rd.manifest.submissions) if rd else []
        if subs and self.state.cluster_up:
            try:
                client = self._client()
                for sid in subs:
                    if jobs.job_status(client, sid) not in jobs.TERMINAL:
                        self.reporter.step(f"stopping job {sid} (grace period for a checkpoint)")
                        jobs.stop_job(client, sid, grace_s=grace_s)
                        if rd:
                            rd.event("job stopped", submission_id=sid)
                    try:  # keep the job's log: the cluster (and Ray's copy) is about to go
                        if rd:
                            rd.write(f"{sid}.log", client.get_job_logs(sid))
                    except Exception:
                        pass
                    if rd:  # and how it ended, for `status` once Ray is gone
                        st, code, msg = jobs.final_state(client, sid)
                        if st != "UNKNOWN":
                            states = dict(rd.manifest.job_states)
                            states[sid] = JobRecord(status=st, exit_code=code, message=msg)
                            rd.update(job_states=states)
            except Exception as e:
                log.warning("could not stop the job through Ray (%s); stopping the cluster", str(e)[:200])
                self.reporter.done("stopping the job through Ray", False, str(e)[:200])
        try:
            return self.cluster.down(purge=purge)
        finally:
            self.cluster.transport.close()

    def __enter__(self) -> Run:
        if not self.cluster.is_up:
            self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def _host_record(h: Host) -> HostRecord:
    return HostRecord(
        name=h.name,
        address=h.address,
        gpus=h.slots or 0,
        ssh_user=h.ssh_user,
        ssh_port=h.ssh_port,
        source=h.source,
    )


def _host_of(rec: NodePlan | HostRecord) -> Host:
    """A plan node or a manifest host record as the :class:`~glmlaunch.hosts.Host` discovery gave."""
    return Host(
        name=rec.name,
        address=rec.address,
        slots=rec.gpus,
        ssh_user=rec.ssh_user,
        ssh_port=rec.ssh_port,
        source=rec.source,
    )


def _stop_quietly(client, sid: str) -> None:
    try:
        jobs.stop_job(client, sid)
    except Exception as e:  # the error that stopped us matters more
        log.warning("could not stop job %s: %s", sid, e)


def _watchdog(
    cluster: RayCluster,
    every_s: float = Defaults.watchdog_s,
    *,
    last_line: list[float] | None = None,
    hang_timeout_s: float | None = None,
):
    """A ``check`` for :func:`jobs.follow`: raises :class:`ClusterError` naming any node that is no
    longer alive (saves GPU-hours instead of letting the trainer hang), and, with
    ``hang_timeout_s``, when the job printed no new log line for that long (``last_line[0]``: the
    monotonic time of the last one): a hang, which supervision counts as a cluster cause."""
    last = [time.monotonic()]

    def check() -> None:
        if (
            hang_timeout_s is not None
            and last_line is not None
            and time.monotonic() - last_line[0] > hang_timeout_s
        ):
            raise ClusterError(
                f"the job printed no new log line for {hang_timeout_s:.0f} s: hung (--hang-timeout)",
                hint="the job was stopped; the crash bundle in the run directory has every node's Ray "
                "log tails; raise --hang-timeout if the trainer is silent that long on purpose",
            )
        if time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        ended = getattr(cluster.transport, "ended_steps", None)  # srun: a node's Slurm step is gone
        gone = ended() if ended else {}
        if gone:
            raise ClusterError(
                f"{len(gone)} node(s) lost their Ray step while the job was running: "
                + "; ".join(f"{h}: {why}" for h, why in gone.items()),
                missing=gone,
                hint="the job was stopped; look at the node (sacct -j JOB, its slurmd log), then launch again "
                "(training resumes from the last checkpoint)",
            )
        try:
            st = cluster.status()
        except GlmlaunchError:
            return
        dead = {
            h: "left the cluster (Ray reports it dead)"
            + (f"; {st.unreachable[h]}" if h in st.unreachable else "")
            for h, v in st.nodes.items()
            if not v["alive"]
        }
        if dead and not st.problems:
            raise ClusterError(
                f"{len(dead)} node(s) died while the job was running: {', '.join(dead)}",
                missing=dead,
                hint="the job was stopped; look at the node, then launch again (training resumes from the last checkpoint)",
            )

    return check


# ----------------------------------------------------------------------------- up / launch


def plan_differences(running: LaunchPlan, new: LaunchPlan) -> list[str]:
    """What differs between a running cluster's plan and a new one for the same nodes: ``trainer
    argv``, ``runtime env``, ``secrets``. A variable both plans probe (``probed_env``,
    docs/fidelity.md#env-presets) is not compared: the running plan holds the nodes' answer, the
    new one the value until they answer."""
    probed = {k for k, p in new.probed_env.items() if running.probed_env.get(k) == p}
    env_old, env_new = (
        {k: v for k, v in e.items() if k not in probed} for e in (running.env_vars, new.env_vars)
    )
    return [
        k
        for k, a, b in (
            ("trainer argv", running.argv, new.argv),
            ("runtime env", env_old, env_new),
            ("secrets", running.secret_env, new.secret_env),
        )
        if a != b
    ]


def _current(p: Planned, reporter: Reporter, transport: Transport | None = None) -> Run | None:
    """The current run if its cluster is up on the same hosts, for the same recipe, with the same
    ports, Python and GPUs per node (``up`` is idempotent); else ``None``. The handle carries the
    new plan's trainer argv and runtime env (overrides apply to the next job)."""
    try:
        run = Run.open(reporter=reporter, transport=transport)
    except GlmlaunchError:
        return None
    assert run.run_dir is not None  # an opened run has its directory
    m, plan = run.run_dir.manifest, p.plan
    if not m.state.cluster_up or m.recipe != p.recipe.run.name:
        return None
    if [h.address for h in m.hosts] != [h.address for h in p.alloc.hosts] or m.ports != plan.ports.named:
        return None
    if run.plan.python != plan.python or run.plan.gpus_per_node != plan.gpus_per_node:
        return None
    try:
        if not run.cluster.status().ok:
            return None
    except GlmlaunchError:
        return None
    differs = plan_differences(run.plan, plan)
    if differs:
        raise ClusterError(
            f"run {run.run_id} is already up on these nodes with another plan ({', '.join(differs)} differ)",
            hint="`glmlaunch down` first to start with the new settings, or move this cluster with --port-base",
        )
    return run


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
    join_timeout_s: float = Defaults.join_timeout_s,
    port_base: int | None = None,
    dashboard_port: int | None = None,
    python: str | None = None,
    deep: bool = False,
    reuse: bool = True,
    env: dict | None = None,
    network: str | None = None,
    interface: str | None = None,
    spares: str | None = None,
) -> Run:
    """Check, then start a Ray cluster for ``recipe`` on the nodes and return its :class:`Run`
    once every node and GPU has joined. With ``reuse``, an identical cluster already up from the
    current run is returned instead of starting a second one. ``spares``: a hostfile of spare
    hosts (:func:`plan_launch`), recorded in the manifest for :meth:`Run.supervise`. Raises :class:`CheckFailed`
    (nothing started), :class:`ClusterError` / :class:`TransportError` (rolled back: nothing left
    running), :class:`UsageError` for bad input."""
    reporter = reporter or NullReporter()
    check_seconds("--join-timeout", join_timeout_s, "300")
    p = plan_launch(
        recipe,
        hostfile,
        overrides=overrides,
        local=local,
        head=head,
        gpus_per_node=gpus_per_node,
        port_base=port_base,
        dashboard_port=dashboard_port,
        python=python,
        deep=deep,
        env=env,
        network=network,
        interface=interface,
        ssh=ssh,
        transport=transport,
        reporter=reporter,
        startable=transport is None,
        spares=spares,
    )
    _refuse(p)
    t = transport or make_transport(p.alloc, ssh)
    if reuse:
        existing = _current(p, reporter, transport)
        if existing is not None:
            reporter.done("cluster already up", True, str(existing.path or ""))
            existing.reused = True
            existing.cluster.recipe = existing.cluster.recipe or p.recipe
            return existing
    run = Run(p.plan, t, recipe=p.recipe, reporter=reporter, join_timeout_s=join_timeout_s)
    run.up(runs_dir, recipe=p.recipe, ssh=ssh, alloc=p.alloc)
    return run


@dataclass
class LaunchResult:
    """What :func:`launch` returns: the plan, the run directory, the job's result, the probe's
    parsed report (for the probe) and the findings shown before the start."""

    plan: LaunchPlan
    run_dir: Path | None
    job: jobs.JobResult | None = None
    probe: dict | None = None
    findings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.job is not None and self.job.ok


def check_supervision(
    max_restarts: object, restart_on: object, hang_timeout_s: object, backoff_base_s: object
) -> None:
    """The supervision options of :func:`launch` / :meth:`Run.supervise`, checked before anything
    (a dry run included): ``max_restarts`` a whole number >= 0, ``restart_on`` ``cluster`` or
    ``any``, ``hang_timeout_s`` ``None`` or finite seconds > 0, ``backoff_base_s`` finite >= 0.
    Raises :class:`UsageError` naming the option."""
    if restart_on not in ("cluster", "any"):
        raise UsageError(f"--restart-on {restart_on}: not cluster or any", "e.g. --restart-on cluster")
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        raise UsageError(
            f"--max-restarts {max_restarts}: must be a whole number, 0 or more", "e.g. --max-restarts 3"
        )
    check_seconds("--hang-timeout", hang_timeout_s, "1800", optional=True)
    if not (
        isinstance(backoff_base_s, int | float) and math.isfinite(backoff_base_s) and backoff_base_s >= 0
    ):
        raise UsageError(f"--backoff {backoff_base_s}: must be 0 or more seconds", "e.g. --backoff 30")


def launch(
    recipe: str | Path | dict | Recipe = DEFAULT_RECIPE,
    hostfile: str | None = None,
    *,
    keep: bool = False,
    follow: bool = True,
    dry_run: bool = False,
    deep: bool = True,
    prepare: bool = False,
    reporter: Reporter | None = None,
    max_restarts: int = 0,
    restart_on: str = "cluster",
    hang_timeout_s: float | None = None,
    backoff_base_s: float = Defaults.restart_backoff_s,
    **up_kwargs,
) -> LaunchResult:
    """Checks, up, submit, follow, down: the whole main job in one call.

    ``recipe``: a template name (default: the local probe), a path, a mapping or a
    :class:`Recipe`; ``hostfile``: an MPI hostfile (default: ``/root/mpi_rack_hostfile``, or the
    Slurm allocation, or this machine for the probe). With ``keep`` the cluster stays up after
    the job; ``dry_run`` only builds and checks the plan (the same plan ``glmlaunch render``
    prints); ``prepare`` first runs :func:`glmlaunch.prep.prepare` on the same nodes (downloads,
    conversion, node-local copies; each skipped when verified already).
    ``max_restarts``/``restart_on``/``hang_timeout_s``/``backoff_base_s``: supervision
    (:meth:`Run.supervise`: restarts after a cluster cause, resuming from the run's newest
    complete checkpoint, every attempt in the manifest). Other keyword arguments go to :func:`up`.

    Returns a :class:`LaunchResult` (``result.ok`` tells whether the trainer succeeded). Raises
    :class:`CheckFailed` before anything starts, :class:`ClusterError`/:class:`TransportError`
    (rolled back), :class:`~glmlaunch.errors.JobError`, :class:`UsageError`.
    """
    import inspect

    reporter = reporter or NullReporter()
    unknown = set(up_kwargs) - set(inspect.signature(up).parameters)
    if unknown:
        raise TypeError(f"launch() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    check_supervision(max_restarts, restart_on, hang_timeout_s, backoff_base_s)
    check_seconds("--join-timeout", up_kwargs.get("join_timeout_s", Defaults.join_timeout_s), "300")
    if dry_run:
        keys = set(inspect.signature(plan_launch).parameters) & set(up_kwargs)
        p = plan_launch(recipe, hostfile, deep=deep, **{k: up_kwargs[k] for k in keys})
        _refuse(p)
        return LaunchResult(plan=p.plan, run_dir=None, findings=list(p.findings))
    if prepare:
        from .prep import prepare as prepare_run

        keys = set(inspect.signature(prepare_run).parameters) & set(up_kwargs)
        prepare_run(recipe, hostfile, reporter=reporter, **{k: up_kwargs[k] for k in keys})
    run = up(recipe, hostfile, deep=deep, reporter=reporter, **up_kwargs)
    try:
        result: jobs.JobResult | None
        if follow:
            result = run.supervise(
                max_restarts=max_restarts,
                restart_on=restart_on,
                hang_timeout_s=hang_timeout_s,
                backoff_base_s=backoff_base_s,
            )
        else:
            result = run.submit(follow=False)
        probe = None
        if result is not None and run.plan.trainer_kind == "probe" and run.path:
            from .probe import parse_report

            probe = parse_report((run.path / "job.log").read_text())
        return LaunchResult(
            plan=run.plan, run_dir=run.path, job=result, probe=probe, findings=run.preflight_findings
        )
    finally:
        if not keep and not run.reused:
            run.down()


def open_run(run: str | None = None, runs_dir: str | None = None, reporter: Reporter | None = None) -> Run:
    """The :class:`Run` of a run started earlier (by id or path; default: the current run)."""
    return Run.open(run, runs_dir, reporter)


__all__ = [
    "LaunchResult",
    "Planned",
    "Run",
    "RunStatus",
    "SSHOptions",
    "launch",
    "open_run",
    "plan_launch",
    "up",
]
